"""Per-case preprocessing stages, as the workflow's jobs and ``medseg predict`` run them.

Each stage is one call on a :class:`~medseg.preprocess.case.CaseJob` and its settings from the
plan (:class:`~medseg.preprocess.config.N4Stage`, ``RegisterStage``, ``SkullstripStage``): it reads
and writes the case's files where :class:`~medseg.preprocess.case.CaseFolder` says, QC JSON and
image included, and returns the QC numbers.

Native space = the case's own grid (the reference modality's); atlas space = the ICBM152 grid
of :mod:`medseg.preprocess.atlas`. A stage that is switched off for a dataset still writes its
outputs (identity transform, unit bias field, copied image), so the DAG never changes shape.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.cohort.sources import read_source
from medseg.io import InputError, read_image, read_labels, write_image, write_json
from medseg.preprocess.atlas import Atlas, atlas_images
from medseg.preprocess.case import CaseJob
from medseg.preprocess.config import N4Config, N4Stage, RegConfig, RegisterStage, SkullstripStage
from medseg.preprocess.intensity import brain_stats
from medseg.preprocess.n4 import atlas_transform, coefficient_of_variation, log_field_correlation, n4_correct, white_matter_mask
from medseg.preprocess.register import mutual_information, register, register_with_info
from medseg.preprocess.skullstrip import skullstrip_with_info
from medseg.preprocess.warp import factor_warp, field_stats, fixed_to_moving, quantize_field, zero_field

log = logging.getLogger(__name__)


def resample_to_spacing(image: sitk.Image, spacing_mm: Sequence[float | None],
                        interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """``image`` on a grid of ``spacing_mm`` (x, y, z) covering the same extent, same origin and direction.

    A ``None`` axis keeps the image's own spacing (thick-slice scans: ``[1.37, 1.37, None]``
    resamples in plane only, each case keeping its slices)."""
    spacing = [float(s) if s is not None else float(own) for s, own in zip(spacing_mm, image.GetSpacing())]
    if len(spacing_mm) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_mm must be 3 positive voxel sizes in mm (or null: the case's own), got {spacing_mm}")
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), spacing, image.GetDirection(),
                         0.0, image.GetPixelID())


def read_working(job: CaseJob, mod: str, stage: N4Stage) -> sitk.Image:
    """A source scan as the working space has it: its channel of a 4-D file, reoriented to
    ``stage.orientation`` (lossless axis reordering) and resampled to ``stage.spacing_mm`` when set."""
    img = read_source(job.images[mod], job.case, job.channels.get(mod))
    if stage.orientation is not None:
        img = sitk.DICOMOrient(img, stage.orientation)
    if stage.spacing_mm is not None:
        img = resample_to_spacing(img, stage.spacing_mm)
    return img


def _truth_dir(job: CaseJob) -> str | None:
    """The demo's truth folder of the case, if the scans are of that cohort (``truth_dir/../..``)."""
    if not job.truth_dir:
        return None
    cohort = Path(job.truth_dir).resolve().parents[1]
    return job.truth_dir if all(Path(p).resolve().is_relative_to(cohort) for p in job.images.values()) else None


def _n4_modality(job: CaseJob, mod: str, img: sitk.Image, cfg: N4Config | None, truth: str | None,
                 start: sitk.Transform | None = None) -> tuple[sitk.Image, sitk.Image, sitk.Image | None, dict,
                                                                sitk.Transform | None]:
    """(corrected, field, QC mask, QC numbers, atlas transform or None) of one modality (``cfg`` None: copy,
    unit field); ``start``: another modality's atlas transform to start the registration from."""
    if cfg is None:
        field = sitk.Image(img.GetSize(), sitk.sitkFloat32) + 1.0
        field.CopyInformation(img)
        return img, field, None, {}, None
    if cfg.mask != "brain":
        from medseg.preprocess.n4 import otsu_mask

        corrected, field = n4_correct(img, None, cfg)
        fg = otsu_mask(img)
        return corrected, field, fg, {"cv_fg_before": coefficient_of_variation(img, fg),
                                      "cv_fg_after": coefficient_of_variation(corrected, fg)}, None
    tfm = atlas_transform(img, cfg.register_spacing_mm, initial=start)
    try:
        corrected, field = n4_correct(img, None, cfg, transform=tfm)
    except ValueError as e:  # e.g. a fitting mask of a few voxels
        raise InputError(f"case {job.case!r}, file {job.images[mod]}: N4 bias correction failed: {e}") from e
    _check_n4(job.case, job.images[mod], corrected, field)
    wm = white_matter_mask(corrected, tfm)
    qc = {"cv_wm_before": coefficient_of_variation(img, wm), "cv_wm_after": coefficient_of_variation(corrected, wm),
          "wm_ml": float(sitk.GetArrayViewFromImage(wm).sum() * np.prod(img.GetSpacing()) / 1000)}
    true_field = Path(truth) / f"bias_{mod}.nii.gz" if truth else None
    if true_field is not None and true_field.exists():
        from medseg.cohort.synth import true_brain_mask

        brain = true_brain_mask(truth, mod, img)
        qc["truth_log_bias_corr"] = log_field_correlation(field, read_image(true_field, case=job.case), brain)
    return corrected, field, wm, qc, tfm


def n4_case(job: CaseJob, stage: N4Stage) -> dict:
    """N4-correct every modality of the case into ``n4/`` (images and ``bias_<mod>``); write the QC
    JSON and, of the first modality, the before / field / after figure. Returns the QC numbers.

    The first stage to read the source scans (:func:`read_working`); predictions return to the
    native grid at the end, through physical coordinates. Per modality: with the atlas mask the
    coefficient of variation in deep white matter (registered ICBM152 WM probability >= 0.9,
    outliers such as tumour dropped; the same voxels before and after) and ``wm_ml``, with the Otsu
    mask in the head foreground; on the demo cohort (``job.truth_dir``) also
    ``truth_log_bias_corr``, the correlation of recovered and applied log bias in the true brain.
    """
    cfg, truth, qc = stage.settings, _truth_dir(job), {}
    out_images, out_fields = job.folder.images("n4", job.modalities), job.folder.bias_fields(job.modalities)
    start = None  # the first modality's atlas transform: where the others' start (n4.share_registration)
    for i, mod in enumerate(job.modalities):
        img = read_working(job, mod, stage)
        corrected, field, mask, numbers, tfm = _n4_modality(job, mod, img, cfg, truth, start)
        start = tfm if start is None and cfg is not None and cfg.share_registration else start
        if numbers:
            qc[mod] = numbers
            log.info("%s %s: %s", job.case, mod, ", ".join(f"{k} {v:.4f}" for k, v in numbers.items()))
        write_image(sitk.Cast(corrected, sitk.sitkFloat32), out_images[mod])
        write_image(sitk.Cast(field, sitk.sitkFloat32), out_fields[mod])
        if i == 0 and job.figures:
            from medseg.preprocess.qc import n4_qc

            n4_qc(img, corrected, field, job.folder.n4_png, title=f"{job.case} {mod} N4" + ("" if cfg else " (off)"),
                  mask=mask, mask_name="deep WM" if cfg is not None and cfg.mask == "brain" else "foreground")
    write_json(qc, job.folder.n4_qc)
    return qc


def _check_n4(case: str, path: str, corrected: sitk.Image, field: sitk.Image) -> None:
    """Raise InputError naming case and file if N4's field is not finite and > 0 everywhere or the
    corrected image holds NaN/inf (a log field below -8.3 rounds to a field of 0, ``image / 0``)."""
    f, c = sitk.GetArrayViewFromImage(field), sitk.GetArrayViewFromImage(corrected)
    bad_field, bad_image = int((~(np.isfinite(f) & (f > 0))).sum()), int((~np.isfinite(c)).sum())
    if bad_field or bad_image:
        raise InputError(f"case {case!r}, file {path}: N4 bias correction gave {bad_field} bias-field voxels that are "
                         f"not finite and > 0 and {bad_image} NaN or infinite voxels in the corrected image; check "
                         "the scan (is it a head? the N4 QC image), or turn steps.n4 off for this dataset")


def _to_atlas(job: CaseJob, ref: sitk.Image, stage: RegisterStage,
              atlas_dir: str | None) -> tuple[sitk.Image, sitk.Transform, sitk.Image, dict]:
    """Reference -> atlas (``cfg.atlas_kind``): (atlas grid, affine part, warp, QC numbers), through its gates."""
    from medseg.preprocess import gates

    cfg = stage.settings
    atlas = Atlas.load(atlas_dir) if atlas_dir else atlas_images(cfg.atlas_spacing_mm)
    grid = atlas.fixed(stage.skull_stripped)
    tfm, info = register_with_info(grid, ref, cfg.atlas_kind, cfg)
    to_ref, warp = factor_warp(tfm, grid)
    warp = quantize_field(warp)  # what is written is what is used and scored
    qc = {"atlas_nmi": mutual_information(grid, ref, fixed_to_moving(to_ref, warp), spacing_mm=cfg.work_spacing_mm),
          "atlas_iterations": info.iterations, "atlas_hit_limit": info.hit_limit, "atlas_search_ran": info.search_ran}
    if cfg.atlas_kind == "bspline":
        qc.update(field_stats(warp, "atlas_warp_"))
    what = f"{stage.reference} -> atlas"
    qc["qc_warnings"] = gates.enforce(job.case, [gates.registration_not_converged(
        what, info.iterations, info.hit_limit, qc["atlas_nmi"], cfg.min_nmi_at_limit)],
        cfg.qc_action, "preprocessing.register.qc_action")
    qc["qc_gates_failed"] = len(qc["qc_warnings"]) + _gate(job.case, what, qc["atlas_nmi"], cfg,
                                                           qc["qc_warnings"])
    return grid, to_ref, warp, qc


def register_case(job: CaseJob, stage: RegisterStage, atlas_dir: str | None = None) -> dict:
    """Align the ``n4/`` images: modalities to the reference (rigid), the reference to the atlas; resample
    all to atlas space (``reg/``, with the label map) and write the transforms, warp, QC JSON and figure.

    Written: one ``reg/tfm_<mod>.tfm`` per modality (reference native -> modality native),
    ``tfm_atlas.tfm`` (the affine part of atlas world -> reference native) and ``warp_atlas.nii.gz``,
    the displacement field ``w`` on the atlas grid completing it: atlas point ``x`` lies at
    ``A(x + w(x))`` in the reference's native world (:func:`medseg.preprocess.warp.fixed_to_moving`);
    zero unless ``atlas_kind: bspline``. ``stage.settings`` None keeps native space (identity, zero field).

    Returns:
        QC numbers: ``atlas_nmi`` and ``<mod>_nmi`` (normalised mutual information), for a B-spline
        ``atlas_warp_max_mm`` and ``atlas_warp_min_jacobian`` (< 0: folding), ``qc_gates_failed`` and
        ``qc_warnings`` (gates that only warned).

    Raises:
        InputError: a QC gate (NMI below ``min_nmi``, a registration that did not converge) with
            ``qc_action: error``, naming the case and the registration.
    """
    cfg, folder, reference = stage.settings, job.folder, stage.reference
    imgs = {m: read_image(p, case=job.case) for m, p in folder.images("n4", job.modalities).items()}
    ref = imgs[reference]
    identity = sitk.Transform(3, sitk.sitkIdentity)
    mod_tfms = {m: identity for m in imgs}
    if cfg is None:
        grid, to_ref, warp, qc = ref, identity, zero_field(ref), {"qc_warnings": []}
    else:
        grid, to_ref, warp, qc = _to_atlas(job, ref, stage, atlas_dir)
        for mod in (m for m in imgs if m != reference):
            mod_tfms[mod] = register(ref, imgs[mod], "rigid", cfg)
            qc[f"{mod}_nmi"] = mutual_information(ref, imgs[mod], mod_tfms[mod], spacing_mm=cfg.work_spacing_mm)
            qc["qc_gates_failed"] += _gate(job.case, f"{mod} -> {reference}", qc[f"{mod}_nmi"], cfg, qc["qc_warnings"])
    atlas_to_ref = fixed_to_moving(to_ref, warp)
    out_images, out_tfms = folder.images("reg", job.modalities), folder.modality_transforms(job.modalities)
    for mod, img in imgs.items():
        chain = sitk.CompositeTransform([mod_tfms[mod], atlas_to_ref])  # atlas -> ref native -> mod native
        warped = sitk.Resample(img, grid, chain, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        write_image(warped, out_images[mod])
        sitk.WriteTransform(mod_tfms[mod], out_tfms[mod])
        if mod == reference and job.figures:
            from medseg.preprocess.qc import registration_qc

            registration_qc(grid, warped, folder.register_png,
                            title=f"{job.case} {reference} -> atlas  NMI {qc.get('atlas_nmi', float('nan')):.3f}")
    sitk.WriteTransform(to_ref, folder.atlas_transform)
    write_image(warp, folder.atlas_warp)
    if job.seg is not None:
        labels = read_labels(job.seg, case=job.case)
        write_image(sitk.Resample(labels, grid, atlas_to_ref, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8),
                    folder.reg_seg)
    write_json(qc, folder.register_qc)
    return qc


def _gate(case: str, what: str, value: float, cfg: RegConfig, warnings: list[str] | None = None) -> int:
    """Check one registration's NMI against ``cfg.min_nmi``; return 1 if it failed (and only warned,
    appending the reason to ``warnings``), else 0."""
    if value >= cfg.min_nmi:
        return 0
    msg = (f"case {case}: registration {what} failed QC: normalised mutual information {value:.3f} < "
           f"preprocessing.register.min_nmi={cfg.min_nmi}; inspect the QC image or set register.qc_action: warn")
    if cfg.qc_action == "error":
        raise InputError(msg)
    log.warning("%s", msg)
    if warnings is not None:
        warnings.append(f"min_nmi: registration {what}: normalised mutual information {value:.3f} < min_nmi={cfg.min_nmi}")
    return 1


def skullstrip_case(job: CaseJob, stage: SkullstripStage, atlas_dir: str | None = None) -> dict:
    """The brain mask of the case (``brain_mask.nii.gz``, from ``stage.modality``'s image of the
    ``stage.stage`` folder), through the QC gates; also its figure, QC JSON and the intensity
    quantiles inside it (``brain_stats.json``, what the fold normalisers are fitted on).

    On the atlas grid (``stage.stage == "reg"``) the brain volume is computed in native space,
    through the registration's transform and warp (:func:`medseg.preprocess.qc.native_volume_ml`).

    Returns:
        ``brain_volume_ml`` (native space), ``brain_volume_grid_ml`` (on the image's grid),
        ``qc_warnings`` (failed gates with ``qc_action: warn``; :mod:`medseg.preprocess.gates`)
        and, for the ``atlas`` method, its registration's numbers.

    Raises:
        InputError: an empty mask, or a failed gate with ``qc_action: error`` (naming case and check).
    """
    from dataclasses import replace

    from medseg.preprocess import gates
    from medseg.preprocess.qc import mask_qc, native_volume_ml

    cfg, folder = stage.settings, job.folder
    if cfg.method == "atlas" and atlas_dir and cfg.atlas_dir is None:
        cfg = replace(cfg, atlas_dir=atlas_dir)
    images = folder.images(stage.stage, job.modalities)
    img = read_image(images[stage.modality], case=job.case)
    mask, info = skullstrip_with_info(img, cfg)
    write_image(mask, folder.brain_mask)
    registered = stage.stage == "reg"
    to_native = sitk.ReadTransform(folder.atlas_transform) if registered else None
    warp = read_image(folder.atlas_warp, case=job.case, pixel_type=sitk.sitkVectorFloat64) if registered else None
    if job.figures:
        mask_qc(img, mask, folder.mask_png, title=f"{job.case} brain mask ({cfg.method})", to_native=to_native,
                warp=warp)
    grid = float(sitk.GetArrayViewFromImage(mask).sum() * np.prod(mask.GetSpacing()) / 1000)
    if grid == 0:
        raise InputError(f"case {job.case}: skull stripping of {images[stage.modality]} produced an empty brain mask")
    vol = native_volume_ml(mask, to_native, warp)
    checks = [gates.brain_volume(mask, cfg.min_brain_ml, cfg.max_brain_ml, volume_ml=vol),
              gates.mask_at_fov_edge(img, mask, cfg.fov_edge_mm2)]
    if "registration_nmi" in info:
        checks.append(gates.registration_not_converged("atlas -> image", info["registration_iterations"],
                                                       info["registration_hit_limit"], info["registration_nmi"],
                                                       cfg.register.min_nmi_at_limit))
    qc = {"brain_volume_ml": vol, "brain_volume_grid_ml": grid, **info,
          "qc_warnings": gates.enforce(job.case, checks, cfg.qc_action, "preprocessing.skullstrip.qc_action")}
    write_json(qc, folder.skullstrip_qc)
    brain_stats(job.case, images, folder.brain_mask, folder.brain_stats)
    return qc
