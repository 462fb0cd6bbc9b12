"""Per-case preprocessing stages on files, as the workflow runs them (one call per job).

Native space = the case's own grid (the reference modality's); atlas space = the ICBM152 grid
of :mod:`medseg.preprocess.atlas`. A stage that is switched off for a dataset still writes its
outputs (identity transform, unit bias field, copied image), so the DAG never changes shape.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.cohort.sources import read_source
from medseg.io import InputError, read_image, read_labels, read_json, save_npz, write_image, write_json
from medseg.preprocess.atlas import Atlas, atlas_images
from medseg.preprocess.n4 import (N4Config, atlas_transform, coefficient_of_variation, log_field_correlation, n4_correct,
                                  white_matter_mask)
from medseg.preprocess.normalize import NormConfig, brain_quantiles, fit_model_from_quantiles, normalize
from medseg.preprocess.register import RegConfig, mutual_information, register, register_with_info
from medseg.preprocess.warp import factor_warp, field_stats, fixed_to_moving, quantize_field, zero_field
from medseg.preprocess.skullstrip import SkullstripConfig, skullstrip_with_info
from medseg.tasks.definition import Task

log = logging.getLogger(__name__)


def stage_images(directory: str | Path, modalities: Sequence[str]) -> dict[str, str]:
    """A stage folder's images (``n4/`` or ``reg/``: ``<modality>.nii.gz`` each), modality -> path."""
    return {m: str(Path(directory) / f"{m}.nii.gz") for m in modalities}


def resample_to_spacing(image: sitk.Image, spacing_mm: Sequence[float], interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """``image`` on a grid of ``spacing_mm`` (x, y, z) covering the same extent, same origin and direction."""
    spacing = [float(s) for s in spacing_mm]
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_mm must be 3 positive voxel sizes in mm, got {spacing_mm}")
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), spacing, image.GetDirection(),
                         0.0, image.GetPixelID())


def n4_case(case: str, images: dict[str, str], out_images: dict[str, str], out_fields: dict[str, str],
            cfg: N4Config | None, qc_png: str | None = None, truth_dir: str | None = None,
            channels: Mapping[str, int] | None = None, spacing_mm: Sequence[float] | None = None,
            orientation: str | None = None) -> dict:
    """N4-correct every modality of ``case`` (``cfg=None``: copy, unit field). Returns QC metrics.

    The first stage to read the source scans: ``channels`` picks each modality's channel of a
    4-D (Decathlon) file; ``orientation`` (e.g. ``"LPS"``) reorders the axes losslessly so every
    case's slices have the same anatomical direction (the working space without registration);
    ``spacing_mm`` resamples every modality to that voxel size (``None`` keeps the grid).
    Predictions return to the native grid at the end, through physical coordinates.

    Per modality: ``cv_wm_before`` / ``cv_wm_after``, the coefficient of variation in deep white
    matter (registered ICBM152 WM probability >= 0.9, outliers such as tumour dropped; the same
    voxels before and after), and ``wm_ml``. With ``truth_dir`` (the demo cohort's
    ``truth/<case>/``, holding the applied ``bias_<mod>.nii.gz``; only used for images of the same
    cohort folder, ``truth_dir/../..``) also ``truth_log_bias_corr``:
    correlation of recovered and applied log bias inside the true brain mask (in ``mod``'s frame).
    ``qc_png``: before / field / after figure of the first modality.
    """
    qc: dict = {}
    if truth_dir and not all(Path(p).resolve().is_relative_to(Path(truth_dir).resolve().parents[1]) for p in images.values()):
        truth_dir = None  # a truth folder of some other cohort (e.g. the demo's, left beside real data)
    for mod, path in images.items():
        img = read_source(path, case, (channels or {}).get(mod))  # the first stage to read the scans
        if orientation is not None:
            img = sitk.DICOMOrient(img, orientation)
        if spacing_mm is not None:
            img = resample_to_spacing(img, spacing_mm)
        wm = None
        if cfg is None:
            corrected, field = img, sitk.Image(img.GetSize(), sitk.sitkFloat32) + 1.0
            field.CopyInformation(img)
        elif cfg.mask != "brain":
            from medseg.preprocess.n4 import otsu_mask

            corrected, field = n4_correct(img, None, cfg)
            wm = otsu_mask(img)
            qc[mod] = {"cv_fg_before": coefficient_of_variation(img, wm), "cv_fg_after": coefficient_of_variation(corrected, wm)}
            log.info("%s %s: foreground CV %.4f -> %.4f", case, mod, qc[mod]["cv_fg_before"], qc[mod]["cv_fg_after"])
        else:
            tfm = atlas_transform(img, cfg.register_spacing_mm)
            try:
                corrected, field = n4_correct(img, None, cfg, transform=tfm)
            except ValueError as e:  # e.g. a fitting mask of a few voxels
                raise InputError(f"case {case!r}, file {path}: N4 bias correction failed: {e}") from e
            _check_n4(case, path, corrected, field)
            wm = white_matter_mask(corrected, tfm)
            qc[mod] = {"cv_wm_before": coefficient_of_variation(img, wm), "cv_wm_after": coefficient_of_variation(corrected, wm),
                       "wm_ml": float(sitk.GetArrayViewFromImage(wm).sum() * np.prod(img.GetSpacing()) / 1000)}
            true_field = Path(truth_dir) / f"bias_{mod}.nii.gz" if truth_dir else None
            if true_field is not None and true_field.exists():
                from medseg.cohort.synth import true_brain_mask

                brain = true_brain_mask(truth_dir, mod, img)
                qc[mod]["truth_log_bias_corr"] = log_field_correlation(field, read_image(true_field, case=case), brain)
            log.info("%s %s: WM CV %.4f -> %.4f%s", case, mod, qc[mod]["cv_wm_before"], qc[mod]["cv_wm_after"],
                     f", log-bias correlation with truth {qc[mod]['truth_log_bias_corr']:.3f}" if "truth_log_bias_corr" in qc[mod] else "")
        write_image(sitk.Cast(corrected, sitk.sitkFloat32), out_images[mod])
        write_image(sitk.Cast(field, sitk.sitkFloat32), out_fields[mod])
        if qc_png and mod == next(iter(images)):
            from medseg.preprocess.qc import n4_qc

            n4_qc(img, corrected, field, qc_png, title=f"{case} {mod} N4" + ("" if cfg else " (off)"), mask=wm,
                  mask_name="deep WM" if cfg is not None and cfg.mask == "brain" else "foreground")
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


def register_case(case: str, images: dict[str, str], seg: str | None, reference: str, out_images: dict[str, str],
                  out_seg: str, out_transforms: dict[str, str], cfg: RegConfig | None, skull_stripped: bool,
                  atlas_dir: str | None = None, qc_png: str | None = None, out_warp: str | None = None) -> dict:
    """Align modalities to ``reference`` (rigid), the reference to the atlas (``cfg.atlas_kind``), resample to atlas space.

    ``out_transforms`` has one ``.tfm`` per modality (reference native -> modality native) and
    ``atlas`` (the affine part of atlas world -> reference native). ``out_warp`` is the displacement
    field ``w`` on the atlas grid that completes it: atlas point ``x`` lies at ``A(x + w(x))`` in
    the reference's native world (:func:`medseg.preprocess.warp.fixed_to_moving`); it is
    zero unless ``cfg.atlas_kind == "bspline"`` but always written, so the DAG keeps its shape.
    ``cfg=None`` keeps native space (identity, zero field).
    ``qc_png``: checkerboard of the atlas (or native reference) and the registered reference.

    Returns:
        QC metrics: ``atlas_nmi`` and ``<mod>_nmi`` (normalised mutual information), for a
        B-spline ``atlas_warp_max_mm`` and ``atlas_warp_min_jacobian`` (< 0: folding), and
        ``qc_gates_failed`` (gates that only warned).

    Raises:
        InputError: QC gate -- normalised mutual information below ``cfg.min_nmi`` (unless
            ``cfg.qc_action == "warn"``), naming the case and modality.
        ValueError: a B-spline registration without ``out_warp`` to write it to.
    """
    imgs = {m: read_image(p, case=case) for m, p in images.items()}
    ref = imgs[reference]
    qc: dict = {}
    if cfg is None:
        grid, to_ref, warp = ref, sitk.Transform(3, sitk.sitkIdentity), zero_field(ref)
        mod_tfms = {m: sitk.Transform(3, sitk.sitkIdentity) for m in images}
        qc["qc_warnings"] = []
    else:
        if cfg.atlas_kind != "affine" and out_warp is None:
            raise ValueError(f"case {case}: register.atlas_kind={cfg.atlas_kind!r} needs out_warp for the displacement field")
        atlas = Atlas.load(atlas_dir) if atlas_dir else atlas_images(cfg.atlas_spacing_mm)
        fixed = atlas.fixed(skull_stripped)
        grid = fixed
        tfm, info = register_with_info(fixed, ref, cfg.atlas_kind, cfg)
        to_ref, warp = factor_warp(tfm, grid)
        warp = quantize_field(warp)  # what is written is what is used and scored
        qc["atlas_nmi"] = mutual_information(fixed, ref, fixed_to_moving(to_ref, warp), spacing_mm=cfg.work_spacing_mm)
        qc["atlas_iterations"], qc["atlas_hit_limit"] = info.iterations, info.hit_limit
        if cfg.atlas_kind == "bspline":
            qc.update(field_stats(warp, "atlas_warp_"))
        from medseg.preprocess import gates

        qc["qc_warnings"] = gates.enforce(case, [gates.registration_not_converged(
            reference + " -> atlas", info.iterations, info.hit_limit, qc["atlas_nmi"], cfg.min_nmi_at_limit)],
            cfg.qc_action, "preprocessing.register.qc_action")
        failed = len(qc["qc_warnings"]) + _gate(case, reference + " -> atlas", qc["atlas_nmi"], cfg, qc["qc_warnings"])
        mod_tfms = {}
        for mod in images:
            if mod == reference:
                mod_tfms[mod] = sitk.Transform(3, sitk.sitkIdentity)
                continue
            moving = imgs[mod]
            mod_tfms[mod] = register(ref, moving, "rigid", cfg)
            qc[f"{mod}_nmi"] = mutual_information(ref, moving, mod_tfms[mod], spacing_mm=cfg.work_spacing_mm)
            failed += _gate(case, f"{mod} -> {reference}", qc[f"{mod}_nmi"], cfg, qc["qc_warnings"])
        qc["qc_gates_failed"] = failed
    atlas_to_ref = fixed_to_moving(to_ref, warp)
    for mod, img in imgs.items():
        chain = sitk.CompositeTransform([mod_tfms[mod], atlas_to_ref])  # atlas -> ref native -> mod native
        warped = sitk.Resample(img, grid, chain, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        write_image(warped, out_images[mod])
        sitk.WriteTransform(mod_tfms[mod], out_transforms[mod])
        if qc_png and mod == reference:
            from medseg.preprocess.qc import registration_qc

            registration_qc(grid, warped, qc_png, title=f"{case} {reference} -> atlas  NMI {qc.get('atlas_nmi', float('nan')):.3f}")
    sitk.WriteTransform(to_ref, out_transforms["atlas"])
    if out_warp is not None:
        write_image(warp, out_warp)
    if seg is not None:
        labels = read_labels(seg, case=case)
        write_image(sitk.Resample(labels, grid, atlas_to_ref, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8), out_seg)
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


def skullstrip_case(case: str, image: str, out_mask: str, cfg: SkullstripConfig, qc_png: str | None = None,
                    atlas_transform: str | None = None, atlas_warp: str | None = None) -> dict:
    """Brain mask of ``image`` (``qc_png``: mask outline on three planes), through the QC gates.

    ``atlas_transform`` / ``atlas_warp``: when ``image`` is on the atlas grid (after registration),
    the atlas -> native transform and warp files the registration wrote; the brain volume is then
    computed in native space (:func:`medseg.preprocess.qc.native_volume_ml`).

    Returns:
        ``brain_volume_ml`` (native space), ``brain_volume_grid_ml`` (on ``image``'s grid),
        ``qc_warnings`` (failed gates with ``cfg.qc_action: warn``; :mod:`medseg.preprocess.gates`)
        and, for the ``atlas`` method, its registration's numbers.

    Raises:
        InputError: an empty mask, or a failed gate with ``cfg.qc_action: error`` (naming case and check).
    """
    from medseg.preprocess import gates
    from medseg.preprocess.qc import native_volume_ml

    img = read_image(image, case=case)
    mask, info = skullstrip_with_info(img, cfg)
    write_image(mask, out_mask)
    to_native = sitk.ReadTransform(str(atlas_transform)) if atlas_transform else None
    warp = read_image(atlas_warp, case=case, pixel_type=sitk.sitkVectorFloat64) if atlas_warp and to_native else None
    if qc_png:
        from medseg.preprocess.qc import mask_qc

        mask_qc(img, mask, qc_png, title=f"{case} brain mask ({cfg.method})", to_native=to_native, warp=warp)
    grid = float(sitk.GetArrayViewFromImage(mask).sum() * np.prod(mask.GetSpacing()) / 1000)
    if grid == 0:
        raise InputError(f"case {case}: skull stripping of {image} produced an empty brain mask")
    vol = native_volume_ml(mask, to_native, warp)
    checks = [gates.brain_volume(mask, cfg.min_brain_ml, cfg.max_brain_ml, volume_ml=vol),
              gates.mask_at_fov_edge(img, mask, cfg.fov_edge_mm2)]
    if "registration_nmi" in info:
        checks.append(gates.registration_not_converged("atlas -> image", info["registration_iterations"],
                                                       info["registration_hit_limit"], info["registration_nmi"],
                                                       cfg.register.min_nmi_at_limit))
    warnings = gates.enforce(case, checks, cfg.qc_action, "preprocessing.skullstrip.qc_action")
    return {"brain_volume_ml": vol, "brain_volume_grid_ml": grid, **info, "qc_warnings": warnings}


def nonzero_brain(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The brain of scans that come skull-stripped: voxels nonzero in any modality, holes filled."""
    from scipy import ndimage as ndi

    return ndi.binary_fill_holes(np.logical_or.reduce([a != 0 for a in arrays.values()]))


def _load(case: str, images: dict[str, str], mask: str | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The case's arrays and its brain: ``mask``, or with ``None`` (steps.skullstrip off) :func:`nonzero_brain`."""
    arrays = {m: sitk.GetArrayFromImage(read_image(p, case=case)) for m, p in images.items()}
    brain = sitk.GetArrayFromImage(read_labels(mask, case=case)) > 0 if mask else nonzero_brain(arrays)
    return arrays, brain


def _check_brain(case: str, brain: np.ndarray, images: Mapping[str, str], mask: str | None) -> None:
    """Raise InputError naming the case and the files if there is no brain left to normalise."""
    if not brain.any():
        raise InputError(f"case {case!r}, file {mask}: the brain mask is empty: no brain voxels to compute intensity "
                         "statistics on or normalise (check the skull-stripping QC image)" if mask else
                         f"case {case!r}, files {sorted(images.values())}: every voxel is 0 in every modality: no "
                         "brain voxels to compute intensity statistics on or normalise")


def case_quantiles(case: str, images: dict[str, str], mask: str | None) -> dict:
    """The case's intensity quantiles inside its brain (what fitting a fold reads)."""
    arrays, brain = _load(case, images, mask)
    _check_brain(case, brain, images, mask)
    return {"case": case, **brain_quantiles(arrays, brain)}


def brain_stats(case: str, images: dict[str, str], mask: str | None, out_json: str) -> dict:
    """Write :func:`case_quantiles` to ``out_json``."""
    out = case_quantiles(case, images, mask)
    write_json(out, out_json)
    return out


def quantiles_from_images(images: Mapping[str, Mapping[str, str]], threads: int = 1) -> list[dict]:
    """:func:`case_quantiles` inside :func:`nonzero_brain` for every case (case -> {modality: path}),
    ``threads`` cases at a time (steps.skullstrip off: there is no per-case skull-stripping job)."""
    from medseg.parallel import thread_map

    return thread_map(lambda c: case_quantiles(c, dict(images[c]), None), images, threads, "intensity statistics",
                      "case")


def collect_stats(stats: Sequence[str | Mapping], out_json: str) -> dict:
    """Gather per-case :func:`brain_stats` files (or their dicts) into one ``{case: quantiles}`` table."""
    table = {}
    for st in stats:
        st = st if isinstance(st, Mapping) else read_json(st)
        table[st["case"]] = {k: v for k, v in st.items() if k != "case"}
    write_json(table, out_json)
    return table


def fit_normalizer(cases: Sequence[str], stats_table: str, out_json: str, cfg: NormConfig,
                   modalities: Sequence[str] | None = None) -> dict:
    """Fit the Nyul standard scale on ``cases``' quantiles (from :func:`collect_stats`) and write it."""
    table = read_json(stats_table)
    missing = [c for c in cases if c not in table]
    if missing:
        raise InputError(f"{stats_table} has no intensity statistics for training case(s) {missing[:5]}: "
                         "re-run collect_brain_stats")
    model = fit_model_from_quantiles([table[c] for c in cases], cfg, modalities)
    model["cases"] = list(cases)
    write_json(model, out_json)
    return model


def gather_normalizers(model_jsons: Sequence[str], out_json: str) -> dict:
    """Every fold's normaliser (one :func:`fit_normalizer` file per fold, in fold order) in one file:
    what each case's normalisation reads, one input instead of one per fold."""
    gathered = {"folds": [read_json(p) for p in model_jsons]}
    write_json(gathered, out_json)
    return gathered


def fold_models(model_jsons: str | Sequence[str]) -> list[dict]:
    """The fold normalisers from a :func:`gather_normalizers` file, or from one file per fold."""
    if isinstance(model_jsons, (str, Path)):
        return read_json(model_jsons)["folds"]
    return [read_json(p) for p in model_jsons]


def normalized_arrays(case: str, images: dict[str, str], mask: str | None, model_jsons: str | Sequence[str],
                      cfg: NormConfig, seg: str | None = None, task: Task | None = None) -> dict[str, np.ndarray]:
    """``case`` normalised with each fold's normaliser (``mask=None``: :func:`nonzero_brain`).

    ``model_jsons``: see :func:`fold_models`. Returns ``image`` (folds, C, z, y, x) float32 (fold
    k normalised with fold k's normaliser, channels in modality order), ``brain`` (uint8) and, if
    ``seg`` is given, ``labels`` (checked against ``task``; a label map on another grid than the
    images, e.g. the source one when the images were resampled, is resampled onto theirs with
    nearest neighbour).
    """
    arrays, brain = _load(case, images, mask)
    _check_brain(case, brain, images, mask)
    folds = []
    for model in fold_models(model_jsons):
        norm = normalize(arrays, brain, model, cfg)
        folds.append(np.stack([norm[m] for m in images]))
    out = {"image": np.stack(folds), "brain": brain.astype(np.uint8)}
    if seg is not None:
        if task is None:
            raise ValueError(f"case {case}: a label map needs the task to check its values against")
        seg_img = read_labels(seg, case=case)
        grid = read_image(next(iter(images.values())), case=case)
        if seg_img.GetSize() != grid.GetSize() or not np.allclose(seg_img.GetSpacing(), grid.GetSpacing(), atol=1e-3) \
                or not np.allclose(seg_img.GetOrigin(), grid.GetOrigin(), atol=1e-3):
            seg_img = sitk.Resample(seg_img, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        labels = sitk.GetArrayFromImage(seg_img)
        task.check_values(np.unique(labels).tolist(), f"case {case}, file {seg}: ")
        out["labels"] = labels
    return out


def normalize_case(case: str, images: dict[str, str], mask: str | None, model_jsons: str | Sequence[str], out_npz: str,
                   cfg: NormConfig) -> None:
    """Write :func:`normalized_arrays` of ``case`` to ``out_npz`` (what prediction reads)."""
    save_npz(out_npz, **normalized_arrays(case, images, mask, model_jsons, cfg))


def tile_training_case(case: str, images: dict[str, str], mask: str | None, seg: str, model_jsons: str | Sequence[str],
                       out_npy: str, out_json: str, cfg: NormConfig, task: Task) -> dict:
    """Normalise a labelled case for every fold and write its training tiles (one job, no npz)."""
    from medseg.tiling import tile_case

    return tile_case(case, normalized_arrays(case, images, mask, model_jsons, cfg, seg, task), task, out_npy, out_json)
