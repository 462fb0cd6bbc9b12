"""Deformable transforms as files: an affine ``A`` plus a displacement field ``w``, both directions.

A ``bspline`` registration (:func:`medseg.preprocess.register.register`) returns a
``CompositeTransform``. For storage and for the way back it is factored (:func:`factor_warp`)
into ``A`` and ``w`` on the fixed grid with ``T(x) = A(x + w(x))``: the affine stays a small
``.tfm``, the field is a float32 NIfTI, and the inverse ``x -> x + w^-1(x)`` is computed
numerically on the same grid (:func:`invert_field`). :func:`fixed_to_moving` and
:func:`moving_to_fixed` rebuild both directions from the pair (a zero field, as written when the
stage is off, means affine only). Kept apart from registration so inference never imports it.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

_LINEAR = (sitk.sitkAffine, sitk.sitkEuler, sitk.sitkTranslation, sitk.sitkIdentity, sitk.sitkScale,
           sitk.sitkScaleVersor, sitk.sitkVersorRigid, sitk.sitkSimilarity, sitk.sitkScaleSkewVersor)


def factor_warp(transform: sitk.Transform, grid: sitk.Image) -> tuple[sitk.Transform, sitk.Image]:
    """Factor ``transform`` into ``A(x + w(x))``: a linear transform and a displacement field on ``grid``.

    Args:
        transform: a linear transform (rigid, affine) or a ``CompositeTransform`` holding exactly
            one linear and any deformable components, as :func:`register` returns for ``bspline``.
        grid: image whose grid (the fixed image's) the field is sampled on.

    Returns:
        ``(A, w)``: the linear component and a float32 vector image on ``grid`` (displacements in
        mm, world axes), zero when ``transform`` is linear.
    """
    if transform.GetTransformEnum() != sitk.sitkComposite:
        return transform, zero_field(grid)
    comp = sitk.CompositeTransform(transform)
    parts = [comp.GetNthTransform(i) for i in range(comp.GetNumberOfTransforms())]
    linear = [t for t in parts if t.GetTransformEnum() in _LINEAR]
    if len(linear) != 1:
        raise ValueError(f"cannot factor a composite of {[t.GetName() for t in parts]}: expected one linear part")
    residual = sitk.CompositeTransform([linear[0].GetInverse(), comp])  # x -> A^-1(T(x)) = x + w(x)
    field = sitk.TransformToDisplacementField(residual, sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(),
                                              grid.GetSpacing(), grid.GetDirection())
    return linear[0], sitk.Cast(field, sitk.sitkVectorFloat32)


def zero_field(grid: sitk.Image) -> sitk.Image:
    """A zero displacement field (float32, 3 components) on ``grid``: the warp of a linear transform."""
    field = sitk.Image(grid.GetSize(), sitk.sitkVectorFloat32, 3)
    field.CopyInformation(grid)
    return field


def quantize_field(field: sitk.Image, step_mm: float = 2.0**-8) -> sitk.Image:
    """``field`` rounded to multiples of ``step_mm`` (float32): gzip then stores it ~4x smaller, error <= step / 2."""
    arr = np.round(sitk.GetArrayFromImage(field) / step_mm) * step_mm
    out = sitk.GetImageFromArray(arr.astype(np.float32), isVector=True)
    out.CopyInformation(field)
    return out


def field_stats(field: sitk.Image, prefix: str = "") -> dict[str, float]:
    """Largest displacement (mm) and smallest Jacobian determinant of ``x -> x + w(x)`` (< 0: folding)."""
    arr = sitk.GetArrayViewFromImage(field)
    jac = sitk.DisplacementFieldJacobianDeterminant(sitk.Cast(field, sitk.sitkVectorFloat64))
    return {f"{prefix}max_mm": float(np.sqrt((arr.astype(np.float64) ** 2).sum(-1)).max()),
            f"{prefix}min_jacobian": float(sitk.GetArrayViewFromImage(jac).min())}


def is_zero(field: sitk.Image) -> bool:
    """Whether the displacement field ``field`` is zero everywhere."""
    return not np.any(sitk.GetArrayViewFromImage(field))


def invert_field(field: sitk.Image, iterations: int = 50, tolerance_mm: float = 0.01) -> sitk.Image:
    """Numerical inverse of the displacement field ``field`` on the same grid.

    ``x -> x + v(x)`` undoes ``x -> x + w(x)`` (fixed-point iterations of ITK's
    InvertDisplacementFieldImageFilter, to ``tolerance_mm`` maximal error; the border is not
    forced to zero, which would cost up to the warp's size there).
    Returns a float64 vector image (what ``sitk.DisplacementFieldTransform`` takes).
    """
    return sitk.InvertDisplacementField(sitk.Cast(field, sitk.sitkVectorFloat64), maximumNumberOfIterations=iterations,
                                        maxErrorToleranceThreshold=tolerance_mm, meanErrorToleranceThreshold=tolerance_mm / 10,
                                        enforceBoundaryCondition=False)


def _warp(field: sitk.Image) -> sitk.DisplacementFieldTransform:
    # the transform takes ownership of (empties) the image it is given: hand it a copy
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def fixed_to_moving(linear: sitk.Transform, field: sitk.Image | None) -> sitk.Transform:
    """``x -> A(x + w(x))``: fixed world -> moving world, e.g. atlas -> native for ``sitk.Resample(native, atlas_grid, .)``."""
    if field is None or is_zero(field):
        return linear
    return sitk.CompositeTransform([linear, _warp(field)])


def moving_to_fixed(linear: sitk.Transform, field: sitk.Image | None) -> sitk.Transform:
    """The inverse of :func:`fixed_to_moving`: moving world -> fixed world, e.g. native -> atlas.

    The affine is inverted exactly, the warp numerically on its own grid (:func:`invert_field`);
    points whose ``A^-1`` falls outside that grid see the affine only.
    """
    inverse = linear.GetInverse()
    if field is None or is_zero(field):
        return inverse
    return sitk.CompositeTransform([sitk.DisplacementFieldTransform(invert_field(field)), inverse])
