"""N4 bias-field correction (SimpleITK), guided by registered atlas tissue priors.

Plain N4 sharpens the intensity histogram and fits a smooth field to what the sharpening
cannot explain. Regional tissue composition breaks that: the cerebellum (folia unresolved at
1-3 mm, so mixed grey), the WM-dense centre and the CSF-rich rim have different mean
intensities for anatomical reasons, and N4 absorbs them into the field (about 2 % log-intensity
s.d. on a bias-free brain, as large as a weak real bias field). So by default:

1. the ICBM152 head atlas is registered (affine, on a coarse grid) to the image, which gives a
   brain mask (N4 fits inside the brain, never on scalp, bone or air) and WM/GM/CSF priors;
2. the image's own tissue contrast is fitted (robust least squares of intensity on the priors),
   and the image is divided by this expected anatomy, leaving bias x residual anatomy;
3. N4 fits that ratio (one histogram peak, outliers such as tumour in its tails); with
   ``prior_passes`` > 1, steps 2-3 repeat with the contrast refitted on the corrected image
   (on the demo cohort one pass of 30 iterations matches two of 20, at 3/4 of the cost).

The field is returned on the full grid, normalised to geometric mean 1 inside the fitting mask.
``mask: otsu`` with ``tissue_prior: false`` is classic N4 on the head foreground (no atlas).
"""
from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from medseg.preprocess.config import RegConfig
from medseg.preprocess.register import register_with_info, shrink_factors
from medseg.preprocess.config import N4Config

log = logging.getLogger(__name__)

PRIOR_SPACING_MM = 2.0  # grid of the atlas head and tissue priors N4 registers and warps
FIELD_STEP_INV = 4096.0


def otsu_mask(image: sitk.Image) -> sitk.Image:
    """Foreground (head) mask: Otsu threshold, hole filling, largest component."""
    mask = sitk.OtsuThreshold(image, 0, 1, 200)
    mask = sitk.BinaryMorphologicalClosing(mask, [2, 2, 2])
    mask = sitk.BinaryFillhole(mask)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    return sitk.Cast(cc == 1, sitk.sitkUInt8)


def _subsample(image: sitk.Image, factors: list[int]) -> sitk.Image:
    """Every ``factors[i]``-th voxel along axis i, with the geometry of the voxels kept.

    (``sitk.Shrink`` places its output half a block off the samples it keeps for even factors.)
    """
    off = [(f - 1) // 2 for f in factors]
    arr = sitk.GetArrayViewFromImage(image)[tuple(slice(o, None, f) for o, f in zip(off[::-1], factors[::-1]))]
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    out.SetSpacing([s * f for s, f in zip(image.GetSpacing(), factors)])
    out.SetDirection(image.GetDirection())
    out.SetOrigin(image.TransformIndexToPhysicalPoint(off))
    return out


def _refine_grid(grid: sitk.Image, spacing_mm: float) -> sitk.Image:
    """An empty image with ``grid``'s first and last voxel centres and about ``spacing_mm`` voxels."""
    k = [max(1, int(round(s / spacing_mm))) for s in grid.GetSpacing()]
    out = sitk.Image([(n - 1) * f + 1 for n, f in zip(grid.GetSize(), k)], sitk.sitkFloat32)
    out.SetOrigin(grid.GetOrigin())
    out.SetDirection(grid.GetDirection())
    out.SetSpacing([s / f for s, f in zip(grid.GetSpacing(), k)])
    return out


def atlas_transform(image: sitk.Image, spacing_mm: float = 4.0, initial: sitk.Transform | None = None) -> sitk.Transform:
    """Affine registration of the ICBM152 head atlas to ``image`` (any orientation, any contrast).

    Registers on ``image`` averaged down to about ``spacing_mm``; mutual information, so T2 and
    FLAIR work as well as T1. Returns the transform mapping ``image`` world points to atlas world.

    Args:
        image: the scan.
        spacing_mm: voxel size of the registration.
        initial: the same head's transform from another modality of the session (``image`` world ->
            atlas world) to start from: one level at ``spacing_mm`` instead of two, no start search
            (:attr:`~medseg.preprocess.config.N4Config.share_registration`).
    """
    from medseg.preprocess.atlas import atlas_images

    # the priors guide a fit on an ~8 mm grid: a 1e-2 mm final step is ample and halves the cost of 1e-3 (same bias
    # correlation on the demo, benchmarks/bench_stages.py)
    cfg = RegConfig(iterations=100, levels=2 if initial is None else 1, finest_shrink_log2=0, sampling=0.1,
                    work_spacing_mm=spacing_mm, min_step_mm=0.01)
    return register_with_info(image, atlas_images(PRIOR_SPACING_MM).head, "affine", cfg, initial=initial)[0]


def tissue_priors(grid: sitk.Image, transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """ICBM152 WM/GM/CSF probabilities and brain mask warped onto ``grid``.

    Returns:
        ``(priors, brain)``: float32 ``(z, y, x, 3)`` (WM, GM, CSF) and bool ``(z, y, x)``.
    """
    warped = [_warp_prior(name, grid, transform) for name in ("wm", "gm", "csf", "brain")]
    return np.stack(warped[:3], -1), warped[3] > 0.5


def _warp_prior(name: str, grid: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    from medseg.cohort.anatomy import load_head_model

    model = load_head_model(PRIOR_SPACING_MM)
    img = sitk.GetImageFromArray(getattr(model, name).astype(np.float32))
    img.CopyInformation(model.reference)
    return sitk.GetArrayFromImage(sitk.Resample(img, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))


def _fit_contrast(values: np.ndarray, priors: np.ndarray, rounds: int = 4) -> np.ndarray:
    """Tissue intensities ``mu`` (WM, GM, CSF) with ``values ~ priors @ mu``, Tukey-reweighted in log space."""
    w = np.ones_like(values)
    mu = np.full(priors.shape[1], float(np.median(values)))
    for _ in range(rounds):
        mu = np.linalg.lstsq(priors * w[:, None], values * w, rcond=None)[0]
        mu = np.maximum(mu, 0.02 * max(float(mu.max()), 1e-6))
        r = np.log(values) - np.log(priors @ mu)
        s = 1.4826 * float(np.median(np.abs(r - np.median(r)))) + 1e-6
        u = r / (4.685 * s)
        w = np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)
    return mu


def _n4(image: sitk.Image, mask: sitk.Image, cfg: N4Config) -> sitk.N4BiasFieldCorrectionImageFilter:
    filt = sitk.N4BiasFieldCorrectionImageFilter()
    filt.SetMaximumNumberOfIterations(list(cfg.iterations))
    filt.SetConvergenceThreshold(cfg.convergence)
    filt.SetNumberOfHistogramBins(cfg.bins)
    filt.SetBiasFieldFullWidthAtHalfMaximum(cfg.fwhm)
    filt.SetWienerFilterNoise(cfg.wiener_noise)
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    filt.SetNumberOfControlPoints([max(4, int(np.ceil(e / cfg.spline_distance_mm)) + 3) for e in extent])
    filt.Execute(image, mask)
    return filt


def _fitting_mask(image: sitk.Image, small: sitk.Image, mask: sitk.Image | None, cfg: N4Config,
                  transform: sitk.Transform | None) -> tuple[sitk.Image, np.ndarray, np.ndarray | None]:
    """The fitting mask on the fitting grid ``small``, as an image and as a bool array ``(z, y, x)``,
    and the atlas tissue priors ``(z, y, x, 3)`` there (``None`` when ``cfg`` needs no atlas).

    Raises:
        ValueError: fewer than 100 mask voxels on the fitting grid.
    """
    priors = None
    if cfg.mask == "brain" and (mask is None or cfg.tissue_prior):
        transform = transform or atlas_transform(image, cfg.register_spacing_mm)
        priors, brain = tissue_priors(small, transform)
        if mask is None:
            mask = sitk.GetImageFromArray(brain.astype(np.uint8))
            mask.CopyInformation(small)
    if mask is None:
        mask = otsu_mask(image)
    small_mask = mask if mask.GetSize() == small.GetSize() else sitk.Resample(
        sitk.Cast(mask > 0, sitk.sitkUInt8), small, sitk.Transform(), sitk.sitkNearestNeighbor)
    small_mask = sitk.Cast(small_mask > 0, sitk.sitkUInt8)
    sel = sitk.GetArrayViewFromImage(small_mask) > 0
    if sel.sum() < 100:
        raise ValueError(f"N4 fitting mask has {int(sel.sum())} voxels on the fitting grid; check the image "
                         "(is it a head?) or set preprocessing.n4.mask: otsu")
    return small_mask, sel, priors


def _fit_with_priors(small: sitk.Image, small_mask: sitk.Image, sel: np.ndarray, priors: np.ndarray,
                     cfg: N4Config) -> sitk.N4BiasFieldCorrectionImageFilter:
    """N4 of the image divided by its expected anatomy (tissue contrast fitted on the priors),
    ``cfg.prior_passes`` times with the contrast refitted on the corrected image."""
    arr = sitk.GetArrayFromImage(small).astype(np.float64)
    fit = sel & (priors.sum(-1) > 0.5)
    log_field = np.zeros_like(arr)
    for _ in range(cfg.prior_passes):
        mu = _fit_contrast(arr[fit] / np.exp(log_field[fit]), priors[fit].astype(np.float64))
        expected = np.maximum(priors @ mu, 0.02 * mu.max())
        ratio = sitk.GetImageFromArray(np.where(fit, arr / expected, 1.0).astype(np.float32))
        ratio.CopyInformation(small)
        filt = _n4(ratio, small_mask, cfg)
        log_field = sitk.GetArrayFromImage(filt.GetLogBiasFieldAsImage(small)).astype(np.float64)
    log.info("N4 tissue prior: contrast WM/GM/CSF %s", np.round(mu / mu[0], 3).tolist())
    return filt


def _full_field(filt: sitk.N4BiasFieldCorrectionImageFilter, small: sitk.Image, image: sitk.Image,
                offset: float, target: float) -> sitk.Image:
    """The fitted field on ``image``'s grid, divided by ``exp(offset)``, float32, in steps of 1/4096."""
    # ITK evaluates the fitted B-spline over the extent of whatever grid it is given, so it is
    # evaluated on a ~4 mm grid spanning exactly the fitting grid, then interpolated onto the image
    log_field = filt.GetLogBiasFieldAsImage(_refine_grid(small, min(4.0, target))) - offset
    log_field = sitk.Resample(log_field, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32,
                              True)  # nearest extrapolation beyond the fitting grid's outer voxel centres
    field = sitk.Cast(sitk.Exp(log_field), sitk.sitkFloat32)
    # multiples of 2^-12 (far finer than any field's accuracy): the stored field compresses ~4x
    return sitk.Cast(sitk.Round(field * FIELD_STEP_INV) / FIELD_STEP_INV, sitk.sitkFloat32)


def n4_correct(image: sitk.Image, mask: sitk.Image | None = None, cfg: N4Config = N4Config(),
               transform: sitk.Transform | None = None) -> tuple[sitk.Image, sitk.Image]:
    """Correct ``image`` for a smooth multiplicative bias field.

    Args:
        image: 3-D image, any orientation and spacing.
        mask: voxels used for fitting (default: ``cfg.mask``, the atlas brain or the Otsu head).
        cfg: fitting parameters.
        transform: ``image`` world -> atlas world, if already known (see :func:`atlas_transform`);
            computed when ``cfg`` needs the atlas and none is given.

    Returns:
        ``(corrected, bias_field)`` on ``image``'s grid, float32, with ``image = corrected * bias_field``.
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    target = cfg.fit_spacing_mm if cfg.shrink_factor is None else min(image.GetSpacing()) * cfg.shrink_factor
    factors = shrink_factors(image, target)
    shift = float(max(0.0, -sitk.GetArrayViewFromImage(image).min())) + 1.0  # N4 needs intensities > 0
    small = _subsample(image, factors) + shift
    small_mask, sel, priors = _fitting_mask(image, small, mask, cfg, transform)
    if not cfg.tissue_prior:
        filt = _n4(small, small_mask, cfg)
    else:
        filt = _fit_with_priors(small, small_mask, sel, priors, cfg)
    small_log = sitk.GetArrayFromImage(filt.GetLogBiasFieldAsImage(small))
    offset = float(np.median(small_log[sel]))
    field = _full_field(filt, small, image, offset, target)
    corrected = sitk.Cast(image / field, sitk.sitkFloat32)  # "/" is DivideReal (float64)
    log.info("N4 (%s mask%s): field range [%.3f, %.3f] in the mask", cfg.mask,
             ", tissue prior" if cfg.tissue_prior else "", *np.exp(np.percentile(small_log[sel] - offset, [1, 99])))
    return corrected, field


def white_matter_mask(image: sitk.Image, transform: sitk.Transform, min_prob: float = 0.9) -> sitk.Image:
    """Deep white matter of ``image``: registered ICBM152 WM probability >= ``min_prob``, minus outliers.

    Contrast-agnostic (T1, T2, FLAIR alike). Voxels whose intensity is more than 3 robust s.d.
    from the region's median (tumour, lesions, a misregistered ventricle) are dropped.
    """
    wm = _warp_prior("wm", image, transform) >= min_prob
    vals = sitk.GetArrayViewFromImage(image)
    if wm.sum() > 10:
        v = np.log(np.maximum(vals[wm].astype(np.float64), 1e-6))
        med, mad = np.median(v), 1.4826 * np.median(np.abs(v - np.median(v))) + 1e-6
        keep = np.zeros_like(wm)
        keep[wm] = np.abs(v - med) <= 3 * mad
        wm = keep
    out = sitk.GetImageFromArray(wm.astype(np.uint8))
    out.CopyInformation(image)
    return out


def coefficient_of_variation(image: sitk.Image, mask: sitk.Image) -> float:
    """Std / mean of ``image`` inside ``mask`` (lower after a good bias correction)."""
    a = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0]
    return float(a.std() / max(abs(a.mean()), 1e-12))


def log_field_correlation(field: sitk.Image, true_field: sitk.Image, mask: sitk.Image) -> float:
    """Pearson correlation of ``log(field)`` and ``log(true_field)`` inside ``mask`` (all on one grid)."""
    m = sitk.GetArrayViewFromImage(mask) > 0
    a = np.log(np.maximum(sitk.GetArrayViewFromImage(field)[m].astype(np.float64), 1e-12))
    b = np.log(np.maximum(sitk.GetArrayViewFromImage(true_field)[m].astype(np.float64), 1e-12))
    if a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])
