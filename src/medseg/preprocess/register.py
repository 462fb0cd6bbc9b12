"""Rigid, affine and B-spline registration with two interchangeable backends: itk-elastix and SimpleITK.

Convention (ITK's): a registration of ``moving`` onto ``fixed`` returns a transform mapping
points of the fixed image's world to the moving image's world, so
``sitk.Resample(moving, fixed, transform)`` brings ``moving`` onto ``fixed``'s grid. Transforms are
plain SimpleITK transforms, saved as ITK ``.tfm`` files (readable by ITK, 3D Slicer, ANTs).
Rigid and affine ones are inverted exactly with ``GetInverse()``.

A ``bspline`` registration is an affine followed by a B-spline stage and returns a
``CompositeTransform``; :mod:`medseg.preprocess.warp` factors it into the affine and a
displacement field for storage and inverts it for the way back.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from medseg.preprocess.config import KINDS, RegConfig

log = logging.getLogger(__name__)

def shrink_factors(image: sitk.Image, spacing_mm: float) -> list[int]:
    """Per-axis integer factors (>= 1) bringing ``image``'s voxel size near ``spacing_mm``."""
    return [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]


def coarsen(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` block-averaged to about ``spacing_mm`` per axis (itself if already that coarse)."""
    factors = shrink_factors(image, spacing_mm)
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _method(cfg: RegConfig, fixed_mask: sitk.Image | None) -> sitk.ImageRegistrationMethod:
    """Mattes MI, linear interpolation, optional fixed mask: what every sitk stage shares."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(cfg.bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    if not cfg.gradient_image:  # central differences at the sampled points: no gradient image built per level
        reg.MetricUseMovingImageGradientFilterOff()
        reg.MetricUseFixedImageGradientFilterOff()
    return reg


@dataclass
class RegInfo:
    """What a registration's optimiser did (sitk backend; ``None`` where the backend does not say).

    Attributes:
        iterations: iterations at the finest level.
        hit_limit: the finest level stopped at ``cfg.iterations`` (not converged).
        metric: final Mattes mutual information (negative: lower is better).
        stop: the optimiser's stop condition.
        search_ran: whether the coarse pose search ran (``None``: the backend or start has none to run;
            ``init: auto`` runs it only when the centres-of-mass start fails its gate).
        start_nmi: normalised mutual information reached from the centres-of-mass start (``init: auto``).
        search_shift_mm: how far the coarse search moved the start from the centres-of-mass match.
        search_rotation_deg: the rotation it added.
    """

    iterations: int | None = None
    hit_limit: bool | None = None
    metric: float | None = None
    stop: str = ""
    search_ran: bool | None = None
    start_nmi: float | None = None
    search_shift_mm: float = 0.0
    search_rotation_deg: float = 0.0


# exhaustive search grid: (steps each side, step) per Euler parameter (angle x, y, z in degrees; shift x, y, z in mm)
SEARCH_GRID = ((2, 15.0), (0, 10.0), (0, 10.0), (0, 12.0), (2, 12.0), (3, 16.0))


def search_start(fixed: sitk.Image, moving: sitk.Image, spacing_mm: float, bins: int = 32) -> sitk.Euler3DTransform:
    """Rigid start for an atlas registration: centres of mass matched, then an exhaustive search over
    pitch (about the left-right axis, +-30 degrees in 15 degree steps) and shifts (head-foot +-48 mm
    in 16 mm steps, front-back +-24 mm in 12 mm steps: ``SEARCH_GRID``, 175 poses) on images
    block-averaged to ``spacing_mm``; the pose with the best Mattes mutual information wins. Pitch
    and head-foot shift are what a clinical FOV changes most (tilted heads; neck and face pulling
    the centre of mass down); the optimiser that follows recovers the rest.

    Args:
        fixed, moving: images (any orientation); the transform maps fixed world -> moving world.
        spacing_mm: voxel size of the search (coarse: 6-8 mm).
        bins: histogram bins of the metric.
    """
    f, m = coarsen(sitk.Cast(fixed, sitk.sitkFloat32), spacing_mm), coarsen(sitk.Cast(moving, sitk.sitkFloat32), spacing_mm)
    tfm = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(bins)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsExhaustive([n for n, _ in SEARCH_GRID], stepLength=1.0)
    reg.SetOptimizerScales([np.deg2rad(st) if i < 3 else st for i, (_, st) in enumerate(SEARCH_GRID)])
    reg.SetInitialTransform(tfm, inPlace=True)
    reg.Execute(f, m)
    return tfm


def _linear_stage(fixed: sitk.Image, moving: sitk.Image, tfm: sitk.Transform, cfg: RegConfig,
                  fixed_mask: sitk.Image | None, shrink: list[int]) -> sitk.ImageRegistrationMethod:
    """Optimise ``tfm`` in place (regular-step gradient descent over ``shrink`` levels); return the method run."""
    reg = _method(cfg, fixed_mask)
    reg.SetMetricSamplingPercentage(cfg.sampling, cfg.seed)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=cfg.min_step_mm, numberOfIterations=cfg.iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([max(s - 1, 0) for s in shrink])
    reg.SetInitialTransform(tfm, inPlace=True)
    reg.Execute(fixed, moving)
    return reg


def _fit_linear(fixed: sitk.Image, moving: sitk.Image, tfm: sitk.Transform, kind: str, cfg: RegConfig,
                fixed_mask: sitk.Image | None) -> RegInfo:
    """Optimise ``tfm`` in place over ``cfg.levels`` levels (an affine that hits the iteration limit gets one
    more round at the finest level); return what the optimiser did."""
    shrink = [2 ** (i + cfg.finest_shrink_log2) for i in reversed(range(cfg.levels))]
    reg = _linear_stage(fixed, moving, tfm, cfg, fixed_mask, shrink)
    if kind != "rigid" and reg.GetOptimizerIteration() >= cfg.iterations:  # not converged: once more at the finest level
        log.info("sitk affine registration hit its iteration limit (metric %.4f); continuing at the finest level",
                 reg.GetMetricValue())
        reg = _linear_stage(fixed, moving, tfm, cfg, fixed_mask, shrink[-1:])
    iterations = int(reg.GetOptimizerIteration())
    return RegInfo(iterations=iterations, hit_limit=iterations >= cfg.iterations, metric=float(reg.GetMetricValue()),
                   stop=reg.GetOptimizerStopConditionDescription())


def _as_affine(tfm: sitk.Transform) -> sitk.AffineTransform:
    """A rigid (Euler) or affine transform as an ``AffineTransform`` (same centre, matrix, translation)."""
    out = sitk.AffineTransform(3)
    out.SetCenter(tfm.GetCenter())
    out.SetMatrix(tfm.GetMatrix())
    out.SetTranslation(tfm.GetTranslation())
    return out


def _searched_affine(fixed: sitk.Image, moving: sitk.Image, cfg: RegConfig,
                     fixed_mask: sitk.Image | None) -> tuple[sitk.AffineTransform, RegInfo]:
    """The affine optimised from the coarse search's best pose (:func:`search_start`)."""
    start = search_start(fixed, moving, cfg.search_spacing_mm, cfg.bins)
    moments = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    tfm = _as_affine(start)
    info = _fit_linear(fixed, moving, tfm, "affine", cfg, fixed_mask)
    info.search_ran = True
    info.search_shift_mm = float(np.linalg.norm(np.subtract(start.TransformPoint(start.GetCenter()),
                                                             moments.TransformPoint(start.GetCenter()))))
    info.search_rotation_deg = float(np.rad2deg(np.abs([start.GetAngleX(), start.GetAngleY(), start.GetAngleZ()]).max()))
    return tfm, info


def start_failed(info: RegInfo, nmi: float, cfg: RegConfig) -> bool:
    """Whether an affine registration from the centres-of-mass start failed its gate (``init: auto`` then runs
    the coarse search): it stopped at its iteration limit, or its normalised mutual information is below
    ``cfg.min_nmi_at_limit``."""
    return bool(info.hit_limit) or nmi < cfg.min_nmi_at_limit


def _fit_affine(fixed: sitk.Image, moving: sitk.Image, cfg: RegConfig, fixed_mask: sitk.Image | None,
                initial: sitk.Transform | None) -> tuple[sitk.AffineTransform, RegInfo]:
    """The affine of ``cfg.init``: from ``initial`` if given, else the centres of mass (``moments``), the coarse
    search (``search``), or the centres of mass and, only if that fails its gate (:func:`start_failed`), the
    search too, keeping the better of the two by normalised mutual information (``auto``)."""
    if initial is None and cfg.init == "search":
        return _searched_affine(fixed, moving, cfg, fixed_mask)
    tfm = _as_affine(initial) if initial is not None else sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS)
    info = _fit_linear(fixed, moving, tfm, "affine", cfg, fixed_mask)
    info.search_ran = False
    if initial is not None or cfg.init == "moments":
        return tfm, info
    info.start_nmi = mutual_information(fixed, moving, tfm, fixed_mask, cfg.bins)
    if not start_failed(info, info.start_nmi, cfg):
        return tfm, info
    log.info("affine from the centres of mass failed its gate (NMI %.3f, %d iterations%s): running the coarse search",
             info.start_nmi, info.iterations, ", at the limit" if info.hit_limit else "")
    searched, found = _searched_affine(fixed, moving, cfg, fixed_mask)
    found.start_nmi = info.start_nmi
    if mutual_information(fixed, moving, searched, fixed_mask, cfg.bins) >= info.start_nmi:
        return searched, found
    info.search_ran = True
    return tfm, info


def _register_sitk(fixed: sitk.Image, moving: sitk.Image, kind: str, cfg: RegConfig,
                   fixed_mask: sitk.Image | None, initial: sitk.Transform | None = None) -> tuple[sitk.Transform, RegInfo]:
    fixed, moving = sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)
    if kind == "rigid":
        tfm = sitk.Euler3DTransform(initial) if initial is not None else sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
        info = _fit_linear(fixed, moving, tfm, kind, cfg, fixed_mask)
    else:
        tfm, info = _fit_affine(fixed, moving, cfg, fixed_mask, initial)
    log.info("sitk %s registration: %d iterations, metric %.4f (%s)%s", "rigid" if kind == "rigid" else "affine",
             info.iterations, info.metric, info.stop,
             f"; search start moved {info.search_shift_mm:.0f} mm, {info.search_rotation_deg:.0f} deg" if info.search_ran
             else "")
    if kind != "bspline":
        return tfm, info
    return sitk.CompositeTransform([tfm, _bspline_sitk(fixed, moving, tfm, cfg, fixed_mask)]), info


def _bspline_sitk(fixed: sitk.Image, moving: sitk.Image, linear: sitk.Transform, cfg: RegConfig,
                  fixed_mask: sitk.Image | None) -> sitk.BSplineTransform:
    """Cubic B-spline ``B`` on ``fixed``'s domain such that ``linear(B(x))`` aligns ``moving`` (L-BFGS-B)."""
    extent = [(n - 1) * sp for n, sp in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [max(1, round(e / cfg.bspline_grid_mm)) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, 3)
    reg = _method(cfg, fixed_mask)
    shrink = [2**i for i in reversed(range(cfg.levels))]  # ends at full resolution: the detail a warp needs
    voxels = float(np.prod(fixed.GetSize()))
    reg.SetMetricSamplingPercentagePerLevel([min(1.0, cfg.bspline_samples * s**3 / voxels) for s in shrink], cfg.seed)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=cfg.bspline_iterations,
                             maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=cfg.bspline_iterations,
                             costFunctionConvergenceFactor=1e7)
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([max(s - 1, 0) for s in shrink])
    reg.SetMovingInitialTransform(linear)
    reg.SetInitialTransform(bspline, inPlace=True)
    reg.Execute(fixed, moving)
    log.info("sitk bspline stage: mesh %s (%.0f mm), metric %.4f (%s)", mesh, cfg.bspline_grid_mm,
             reg.GetMetricValue(), reg.GetOptimizerStopConditionDescription())
    return bspline


def _register_elastix(fixed: sitk.Image, moving: sitk.Image, kind: str, cfg: RegConfig,
                      fixed_mask: sitk.Image | None) -> sitk.Transform:
    import itk  # heavy (~20 s to load its wrapped libraries): only when this backend is chosen

    def to_itk(img: sitk.Image):
        out = itk.image_from_array(sitk.GetArrayFromImage(sitk.Cast(img, sitk.sitkFloat32)))
        out.SetOrigin(img.GetOrigin())
        out.SetSpacing(img.GetSpacing())
        out.SetDirection(itk.matrix_from_array(np.array(img.GetDirection()).reshape(3, 3)))
        return out

    params = itk.ParameterObject.New()
    pmap = params.GetDefaultParameterMap("rigid" if kind == "rigid" else "affine", cfg.levels)
    pmap["MaximumNumberOfIterations"] = [str(cfg.iterations)]
    pmap["NumberOfHistogramBins"] = [str(cfg.bins)]
    pmap["NumberOfSpatialSamples"] = [str(max(2000, int(cfg.sampling * np.prod(fixed.GetSize()) / 8)))]
    pmap["RandomSeed"] = [str(cfg.seed)]
    pmap["AutomaticTransformInitialization"] = ["true"]
    pmap["AutomaticTransformInitializationMethod"] = ["CenterOfGravity"]
    params.AddParameterMap(pmap)
    if kind == "bspline":  # elastix's default B-spline map (MI + bending energy, stochastic gradient descent)
        bmap = params.GetDefaultParameterMap("bspline", cfg.levels, float(cfg.bspline_grid_mm))
        bmap["MaximumNumberOfIterations"] = [str(cfg.iterations)]
        bmap["NumberOfHistogramBins"] = [str(cfg.bins)]
        bmap["RandomSeed"] = [str(cfg.seed)]
        params.AddParameterMap(bmap)
    kwargs = {"parameter_object": params, "log_to_console": False}
    if fixed_mask is not None:
        kwargs["fixed_mask"] = itk.image_from_array(sitk.GetArrayFromImage(sitk.Cast(fixed_mask, sitk.sitkUInt8)))
        kwargs["fixed_mask"].CopyInformation(to_itk(fixed))
    _, result = itk.elastix_registration_method(to_itk(fixed), to_itk(moving), **kwargs)
    tp = result.GetParameterMap(0)
    p = [float(v) for v in tp["TransformParameters"]]
    centre = [float(v) for v in tp["CenterOfRotationPoint"]]
    if kind == "rigid":
        out = sitk.Euler3DTransform()
        out.SetCenter(centre)
        out.SetRotation(*p[:3])
        out.SetTranslation(p[3:6])
    else:
        out = sitk.AffineTransform(3)
        out.SetCenter(centre)
        out.SetMatrix(p[:9])
        out.SetTranslation(p[9:12])
    if kind == "bspline":
        out = sitk.CompositeTransform([_elastix_bspline(result.GetParameterMap(1)), out])
    log.info("elastix %s registration done", kind)
    return out


def _elastix_bspline(tp) -> sitk.BSplineTransform:
    """The B-spline of an elastix transform parameter map as a SimpleITK transform (same grid, same coefficients).

    Elastix composes a stage with its initial transform as ``T(x) = B(A(x))``: the B-spline acts
    after the affine, so the pair is ``CompositeTransform([B, A])`` in SimpleITK's order.
    """
    values = lambda key: [float(v) for v in tp[key]]  # noqa: E731
    if tp["HowToCombineTransforms"][0] != "Compose" or any(values("GridIndex")):
        raise RuntimeError("unexpected elastix B-spline result (expected composed transforms on a zero-index grid)")
    out = sitk.BSplineTransform(3, int(tp["BSplineTransformSplineOrder"][0]))
    out.SetFixedParameters(values("GridSize") + values("GridOrigin") + values("GridSpacing") + values("GridDirection"))
    out.SetParameters(values("TransformParameters"))
    return out


BACKENDS: dict[str, Callable[..., sitk.Transform | tuple[sitk.Transform, RegInfo]]] = {
    "sitk": _register_sitk, "elastix": _register_elastix,
}


def register(fixed: sitk.Image, moving: sitk.Image, kind: str = "rigid", cfg: RegConfig = RegConfig(),
             fixed_mask: sitk.Image | None = None) -> sitk.Transform:
    """Register ``moving`` onto ``fixed`` with mutual information.

    Args:
        fixed: image defining the target space.
        moving: image to align.
        kind: ``rigid`` (6 dof), ``affine`` (12 dof) or ``bspline`` (affine, then a cubic B-spline
            with control points every ``cfg.bspline_grid_mm`` mm).
        cfg: backend and optimiser settings.
        fixed_mask: optional region of ``fixed`` the metric is computed in.

    Returns:
        Transform mapping fixed-world points to moving-world points (for ``bspline`` a
        ``CompositeTransform`` of the affine and the B-spline; see :func:`medseg.preprocess.warp.factor_warp`).
    """
    return register_with_info(fixed, moving, kind, cfg, fixed_mask)[0]


def register_with_info(fixed: sitk.Image, moving: sitk.Image, kind: str = "rigid", cfg: RegConfig = RegConfig(),
                       fixed_mask: sitk.Image | None = None,
                       initial: sitk.Transform | None = None) -> tuple[sitk.Transform, RegInfo]:
    """:func:`register`, and what its optimiser did (:class:`RegInfo`, for the QC gates).

    ``initial``: a rigid or affine transform (fixed world -> moving world) to start from instead of
    ``cfg.init`` (e.g. the same head's registration to another modality; sitk backend only).
    """
    _check_kind(kind)
    if initial is not None and cfg.backend != "sitk":
        raise ValueError(f"an initial transform needs register.backend: sitk, got {cfg.backend!r}")
    small = coarsen(sitk.Cast(fixed, sitk.sitkFloat32), cfg.work_spacing_mm)
    if fixed_mask is not None and small.GetSize() != fixed.GetSize():
        fixed_mask = sitk.Resample(fixed_mask, small, sitk.Transform(), sitk.sitkNearestNeighbor)
    moving = coarsen(sitk.Cast(moving, sitk.sitkFloat32), cfg.work_spacing_mm)
    start = {} if initial is None else {"initial": initial}
    out = BACKENDS[cfg.backend](small, moving, kind, cfg, fixed_mask, **start)
    return out if isinstance(out, tuple) else (out, RegInfo())  # a backend returns (transform, info) or a transform


def similarity(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
               mask: sitk.Image | None = None) -> float:
    """Normalised cross-correlation in [-1, 1] of ``fixed`` and the warped ``moving`` (inside ``mask``)."""
    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    ref = sitk.GetArrayFromImage(sitk.Cast(fixed, sitk.sitkFloat32))
    sel = sitk.GetArrayFromImage(mask) > 0 if mask is not None else ref > np.percentile(ref, 20)
    a, b = ref[sel] - ref[sel].mean(), warped[sel] - warped[sel].mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-12))


def _bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Index of each value's bin among ``bins`` equal bins from its min to its max (the last one closed), as
    ``np.histogram`` places them, at a fraction of its cost (no search)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.int64)
    return np.minimum(((values - lo) * (bins / (hi - lo))).astype(np.int64), bins - 1)


def mutual_information(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                       mask: sitk.Image | None = None, bins: int = 32, spacing_mm: float | None = None) -> float:
    """Normalised mutual information (Studholme, in [1, 2]) of ``fixed`` and warped ``moving``.

    ``spacing_mm``: computed on ``fixed`` block-averaged to about this voxel size (the grid
    :func:`register` works on), at a fraction of the cost on fine images.
    """
    if spacing_mm is not None:
        small = coarsen(sitk.Cast(fixed, sitk.sitkFloat32), spacing_mm)
        if mask is not None and small.GetSize() != fixed.GetSize():
            mask = sitk.Resample(mask, small, sitk.Transform(), sitk.sitkNearestNeighbor)
        fixed = small
    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    ref = sitk.GetArrayFromImage(sitk.Cast(fixed, sitk.sitkFloat32))
    sel = sitk.GetArrayFromImage(mask) > 0 if mask is not None else ref > np.percentile(ref, 20)
    h = np.bincount(_bins(ref[sel], bins) * bins + _bins(warped[sel], bins), minlength=bins * bins)
    p = (h / h.sum()).reshape(bins, bins)
    px, py = p.sum(1), p.sum(0)
    ent = lambda q: -np.sum(q[q > 0] * np.log(q[q > 0]))  # noqa: E731
    return float((ent(px) + ent(py)) / max(ent(p), 1e-12))
