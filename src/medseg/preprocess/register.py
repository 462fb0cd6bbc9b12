"""Rigid/affine registration with two interchangeable backends: itk-elastix and SimpleITK.

Convention (ITK's): a registration of ``moving`` onto ``fixed`` returns a transform mapping
points of the fixed image's world to the moving image's world, so
``sitk.Resample(moving, fixed, transform)`` brings ``moving`` onto ``fixed``'s grid. Transforms are
plain SimpleITK transforms, saved as ITK ``.tfm`` files (readable by ITK, 3D Slicer, ANTs) and
inverted exactly with ``GetInverse()`` (rigid and affine), so predictions return to native space.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

KINDS = ("rigid", "affine")


@dataclass(frozen=True)
class RegConfig:
    """Registration parameters (config key ``preprocessing.register``).

    Attributes:
        backend: ``elastix`` (itk-elastix) or ``sitk`` (SimpleITK's registration framework).
        iterations: optimiser iterations per resolution level.
        levels: number of multi-resolution levels (shrink 2**(levels-1) ... 1, times the finest shrink).
        finest_shrink_log2: the finest level is shrunk by 2**this (1: stop at half resolution,
            ample for rigid/affine alignment of 1-2 mm images and 4x cheaper).
        sampling: fraction of voxels sampled for the metric (fixed seed, deterministic).
        bins: histogram bins of Mattes mutual information.
        seed: sampling seed.
        atlas_spacing_mm: voxel size of the atlas-space grid the model works on.
        min_nmi: QC gate -- normalised mutual information (Studholme, 1..2) below this fails the job.
        qc_action: ``error`` (fail the case's job) or ``warn`` (log and go on).
    """

    backend: str = "sitk"
    iterations: int = 200
    levels: int = 2
    finest_shrink_log2: int = 1
    sampling: float = 0.05
    bins: int = 32
    seed: int = 1
    atlas_spacing_mm: float = 2.0
    min_nmi: float = 1.02
    qc_action: str = "error"

    def __post_init__(self) -> None:
        if self.qc_action not in ("error", "warn"):
            raise ValueError(f"register.qc_action must be 'error' or 'warn', got {self.qc_action!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"register.backend must be one of {sorted(BACKENDS)}, got {self.backend!r}")
        if not 0 < self.sampling <= 1:
            raise ValueError(f"register.sampling must be in (0, 1], got {self.sampling}")
        if self.levels < 1 or self.iterations < 1:
            raise ValueError("register.levels and register.iterations must be >= 1")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _register_sitk(fixed: sitk.Image, moving: sitk.Image, kind: str, cfg: RegConfig,
                   fixed_mask: sitk.Image | None) -> sitk.Transform:
    base = sitk.Euler3DTransform() if kind == "rigid" else sitk.AffineTransform(3)
    init = sitk.CenteredTransformInitializer(fixed, moving, base, sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(cfg.bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(cfg.sampling, cfg.seed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=cfg.iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    shrink = [2 ** (i + cfg.finest_shrink_log2) for i in reversed(range(cfg.levels))]
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([max(s - 1, 0) for s in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=True)
    reg.Execute(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32))
    log.info("sitk %s registration: %d iterations, metric %.4f (%s)", kind, reg.GetOptimizerIteration(),
             reg.GetMetricValue(), reg.GetOptimizerStopConditionDescription())
    return init


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
    log.info("elastix %s registration done", kind)
    return out


BACKENDS: dict[str, Callable[..., sitk.Transform]] = {"sitk": _register_sitk, "elastix": _register_elastix}


def register(fixed: sitk.Image, moving: sitk.Image, kind: str = "rigid", cfg: RegConfig = RegConfig(),
             fixed_mask: sitk.Image | None = None) -> sitk.Transform:
    """Register ``moving`` onto ``fixed`` with mutual information.

    Args:
        fixed: image defining the target space.
        moving: image to align.
        kind: ``rigid`` (6 dof) or ``affine`` (12 dof).
        cfg: backend and optimiser settings.
        fixed_mask: optional region of ``fixed`` the metric is computed in.

    Returns:
        Transform mapping fixed-world points to moving-world points.
    """
    _check_kind(kind)
    return BACKENDS[cfg.backend](fixed, moving, kind, cfg, fixed_mask)


def similarity(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
               mask: sitk.Image | None = None) -> float:
    """Normalised cross-correlation in [-1, 1] of ``fixed`` and the warped ``moving`` (inside ``mask``)."""
    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    ref = sitk.GetArrayFromImage(sitk.Cast(fixed, sitk.sitkFloat32))
    sel = sitk.GetArrayFromImage(mask) > 0 if mask is not None else ref > np.percentile(ref, 20)
    a, b = ref[sel] - ref[sel].mean(), warped[sel] - warped[sel].mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-12))


def mutual_information(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                       mask: sitk.Image | None = None, bins: int = 32) -> float:
    """Normalised mutual information (Studholme, in [1, 2]) of ``fixed`` and warped ``moving``."""
    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    ref = sitk.GetArrayFromImage(sitk.Cast(fixed, sitk.sitkFloat32))
    sel = sitk.GetArrayFromImage(mask) > 0 if mask is not None else ref > np.percentile(ref, 20)
    h, _, _ = np.histogram2d(ref[sel], warped[sel], bins=bins)
    p = h / h.sum()
    px, py = p.sum(1), p.sum(0)
    ent = lambda q: -np.sum(q[q > 0] * np.log(q[q > 0]))  # noqa: E731
    return float((ent(px) + ent(py)) / max(ent(p), 1e-12))
