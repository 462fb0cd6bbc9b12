"""Quick-look QC figures (PNG) for the preprocessing stages: N4, registration, skull stripping, montage.

Every figure is drawn in one display convention, whatever the image's direction matrix: the
volume is first reoriented to LPS (array ``(z, y, x)`` = superior, posterior, left), then shown
radiologically -- axial with anterior up and the patient's left on the right of the panel,
coronal and sagittal with superior up (sagittal: anterior on the left). Voxel anisotropy is
honoured through ``imshow(aspect=...)``, so a 1 x 1 x 3 mm scan is not squashed. Figures are
drawn on a pyplot-free Agg canvas and written atomically.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure

from medseg.io import atomic_path

log = logging.getLogger(__name__)

CANONICAL = "LPS"
PLANES = ("axial", "coronal", "sagittal")
# edge letters (top, bottom, left, right) of each plane as displayed
_LETTERS = {"axial": "APRL", "coronal": "SIRL", "sagittal": "SIAP"}
_EDGE_CMAP = LinearSegmentedColormap.from_list("edges", [(1.0, 0.15, 0.15, 0.0), (1.0, 0.15, 0.15, 1.0)])


def to_canonical(img: sitk.Image) -> sitk.Image:
    """``img`` reoriented (axes permuted/flipped, voxels untouched) to LPS; raises unless 3-D."""
    if img.GetDimension() != 3:
        raise ValueError(f"img must be 3-D, got {img.GetDimension()}-D with size {img.GetSize()}")
    return sitk.DICOMOrient(img, CANONICAL)


def plane_aspects(img: sitk.Image) -> tuple[float, float, float]:
    """``imshow`` aspect (row mm / column mm) of the axial, coronal and sagittal planes of ``img``."""
    sx, sy, sz = to_canonical(img).GetSpacing()
    return sy / sx, sz / sx, sz / sy


def canonical_slices(img: sitk.Image, center_mm: tuple[float, float, float] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The axial, coronal and sagittal planes of a 3-D image, oriented for display.

    Args:
        img: 3-D image, any orientation and spacing.
        center_mm: world point (x, y, z in mm, LPS as ITK) the planes pass through; default the
            centre voxel of the grid. Points outside the image are clamped to its edge.

    Returns:
        ``(axial, coronal, sagittal)`` 2-D arrays of shapes ``(ny, nx)``, ``(nz, nx)`` and
        ``(nz, ny)`` in the LPS grid's voxel counts; row 0 is anterior (axial) or superior
        (coronal, sagittal). Show them with ``aspect=`` from :func:`plane_aspects`.
    """
    canon = to_canonical(img)
    return _planes(sitk.GetArrayFromImage(canon), _index(canon, center_mm))


def _planes(arr: np.ndarray, idx: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y, z = idx
    return arr[z], np.flipud(arr[:, y, :]), np.flipud(arr[:, :, x])


def _index(canon: sitk.Image, center_mm: tuple[float, float, float] | None) -> tuple[int, int, int]:
    size = np.asarray(canon.GetSize())
    if center_mm is None:
        return tuple(int(i) for i in size // 2)
    cont = np.asarray(canon.TransformPhysicalPointToContinuousIndex([float(c) for c in center_mm]))
    return tuple(int(i) for i in np.clip(np.round(cont), 0, size - 1))


def _foreground(arr: np.ndarray) -> np.ndarray:
    """Head/brain voxels: above the minimum if the background is exactly constant, else Otsu."""
    lo = arr.min()
    if (arr == lo).mean() > 0.1:
        fg = arr > lo
    else:
        from skimage.filters import threshold_otsu

        fg = arr > threshold_otsu(arr, nbins=256)
    return fg if fg.any() else np.ones_like(arr, bool)


def _window(values: np.ndarray) -> tuple[float, float]:
    """1st-99th percentile of ``values``, widened to a unit interval when constant."""
    lo, hi = (float(v) for v in np.percentile(values, [1, 99]))
    return (lo - 0.5, hi + 0.5) if hi - lo <= 1e-6 * max(abs(lo), 1.0) else (lo, hi)


def _rescale(arr: np.ndarray) -> np.ndarray:
    lo, hi = _window(arr[_foreground(arr)])
    return np.clip((arr - lo) / (hi - lo), 0, 1).astype(np.float32)


def _check_same_grid(a: sitk.Image, b: sitk.Image, name: str) -> None:
    if a.GetSize() != b.GetSize() or not (np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
                                          and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
                                          and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)):
        raise ValueError(f"{name} must be on the reference image's grid (size {a.GetSize()}, spacing "
                         f"{a.GetSpacing()}); got size {b.GetSize()}, spacing {b.GetSpacing()} -- resample it first")


def _new_figure(nrows: int, ncols: int, panel_in: float = 2.6) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel_in * ncols + 0.6, panel_in * nrows + 0.5), facecolor="black", layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
    for ax in axes.flat:
        ax.set_facecolor("black")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    return fig, axes


def _decorate(ax: Axes, plane: str, shape: tuple[int, ...], label: str | None = None) -> None:
    """Orientation letters just inside the edges of a displayed ``shape`` plane, optional label."""
    h, w = shape[0], shape[1]
    style = {"color": "yellow", "fontsize": 7, "ha": "center", "va": "center"}
    spots = ((w / 2, 0.04 * h), (w / 2, 0.96 * h), (0.04 * w, h / 2), (0.96 * w, h / 2))
    for letter, (x, y) in zip(_LETTERS[plane], spots):
        ax.text(x - 0.5, y - 0.5, letter, **style)
    if label:
        ax.set_title(label, color="white", fontsize=9)


def _save(fig: Figure, out_png: str | Path, title: str) -> None:
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100, facecolor=fig.get_facecolor())
    log.info("QC figure written: %s", out_png)


def n4_qc(before: sitk.Image, after: sitk.Image, field: sitk.Image, out_png: str | Path, title: str = "",
          mask: sitk.Image | None = None, mask_name: str = "mask") -> None:
    """Before / bias field / after on three planes through the centre of ``mask`` (else of the head).

    Args:
        before: image before N4 (3-D, any orientation).
        after: corrected image on ``before``'s grid.
        field: multiplicative bias field on ``before``'s grid (``before = after * field``).
        out_png: PNG to write.
        title: figure title; the coefficient of variation in the head (or in ``mask``) is appended.
        mask: region of that coefficient of variation (e.g. white matter) on ``before``'s grid;
            default the head foreground.
        mask_name: what ``mask`` is, for the title.

    Raises:
        ValueError: ``after``, ``field`` or ``mask`` is not on ``before``'s grid.
    """
    _check_same_grid(before, after, "after")
    _check_same_grid(before, field, "field")
    if mask is not None:
        _check_same_grid(before, mask, "mask")
    arrs = [sitk.GetArrayFromImage(to_canonical(sitk.Cast(i, sitk.sitkFloat32))) for i in (before, after, field)]
    head = _foreground(arrs[0])
    region = head if mask is None else sitk.GetArrayFromImage(to_canonical(mask)) > 0
    if not region.any():
        region = head
    window = _window(np.concatenate([arrs[0][head], arrs[1][head]]))
    f = arrs[2][head]
    half = max(float(np.abs(np.percentile(f, [1, 99]) - 1.0).max()), 0.02)
    cvs = [float(a[region].std() / max(abs(a[region].mean()), 1e-12)) for a in arrs[:2]]
    centre = np.argwhere(region).mean(axis=0)  # through the brain, not the FOV's centre (a neck, a cropped vertex)
    idx, aspects = tuple(int(round(c)) for c in centre[::-1]), plane_aspects(before)
    fig, axes = _new_figure(3, 3)
    for row, (plane, aspect) in enumerate(zip(PLANES, aspects)):
        b, a, fld = (_planes(x, idx)[row] for x in arrs)
        axes[row, 0].imshow(b, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
        im = axes[row, 1].imshow(fld, cmap="RdBu_r", vmin=1 - half, vmax=1 + half, aspect=aspect, interpolation="nearest")
        axes[row, 2].imshow(a, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
        cb = fig.colorbar(im, ax=axes[row, 1], shrink=0.8)
        cb.ax.tick_params(colors="white", labelsize=7)
        for col, name in enumerate(("before", "bias field (x)", "after")):
            _decorate(axes[row, col], plane, b.shape, name if row == 0 else None)
    where = "head" if mask is None else mask_name
    _save(fig, out_png, f"{title}  CV in {where} {cvs[0]:.3f} -> {cvs[1]:.3f}".strip())


def checkerboard(a: np.ndarray, b: np.ndarray, spacing_zyx: tuple[float, float, float], squares: int = 8) -> np.ndarray:
    """3-D checkerboard of two volumes on one grid: ``a`` in even squares (the corner one), ``b`` in odd.

    Args:
        a, b: arrays ``(z, y, x)`` of the same shape.
        spacing_zyx: voxel size in mm in array order; squares are cubes in mm, not in voxels.
        squares: number of squares across the largest extent (mm) of the volume.

    Raises:
        ValueError: ``squares < 1`` or shapes differ.
    """
    if squares < 1:
        raise ValueError(f"squares must be >= 1, got {squares}")
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"a and b must be 3-D arrays of one shape, got {a.shape} and {b.shape}")
    tile = float((np.asarray(a.shape) * np.asarray(spacing_zyx)).max()) / squares
    zz, yy, xx = (np.floor(np.arange(n) * s / tile).astype(int) for n, s in zip(a.shape, spacing_zyx))
    even = (zz[:, None, None] + yy[None, :, None] + xx[None, None, :]) % 2 == 0
    return np.where(even, a, b)


def registration_qc(fixed: sitk.Image, moving_resampled: sitk.Image, out_png: str | Path, title: str = "",
                    squares: int = 8) -> None:
    """Checkerboard (top row) and moving-edges-over-fixed overlay (bottom row) on three planes.

    Args:
        fixed: reference image (3-D).
        moving_resampled: moving image already resampled onto ``fixed``'s grid.
        out_png: PNG to write.
        title: figure title.
        squares: checkerboard squares across the largest extent of the volume (squares are
            square in mm, not in voxels).

    Raises:
        ValueError: ``squares < 1`` or ``moving_resampled`` not on ``fixed``'s grid.
    """
    _check_same_grid(fixed, moving_resampled, "moving_resampled")
    cf, cm = (to_canonical(sitk.Cast(i, sitk.sitkFloat32)) for i in (fixed, moving_resampled))
    f, m = _rescale(sitk.GetArrayFromImage(cf)), _rescale(sitk.GetArrayFromImage(cm))
    spacing = np.asarray(cf.GetSpacing())[::-1]  # (z, y, x) mm
    checker = checkerboard(f, m, tuple(spacing), squares)
    m_img = sitk.GetImageFromArray(m)
    m_img.CopyInformation(cf)
    grad = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(m_img, float(spacing.min())))
    nonzero = grad[grad > 1e-6]
    lo, hi = np.percentile(nonzero, [85, 98]) if nonzero.size else (0.0, 0.0)
    edges = np.clip((grad - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(grad)
    idx, aspects = _index(cf, None), plane_aspects(fixed)
    fig, axes = _new_figure(2, 3)
    for col, (plane, aspect) in enumerate(zip(PLANES, aspects)):
        axes[0, col].imshow(_planes(checker, idx)[col], cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        axes[1, col].imshow(_planes(f, idx)[col], cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        axes[1, col].imshow(_planes(edges, idx)[col], cmap=_EDGE_CMAP, norm=Normalize(0, 1), aspect=aspect, interpolation="nearest")
        shape = _planes(f, idx)[col].shape
        _decorate(axes[0, col], plane, shape, f"checkerboard ({plane})")
        _decorate(axes[1, col], plane, shape, "fixed + moving edges")
    _save(fig, out_png, title)


def jacobian_determinant(transform: sitk.Transform, point_mm: tuple[float, float, float], step_mm: float = 1.0) -> float:
    """``det J`` of ``transform`` at ``point_mm`` (central differences; exact for an affine transform)."""
    p = np.asarray(point_mm, float)
    cols = []
    for axis in range(3):
        e = np.zeros(3)
        e[axis] = step_mm
        cols.append((np.asarray(transform.TransformPoint(tuple(p + e))) - np.asarray(transform.TransformPoint(tuple(p - e))))
                    / (2 * step_mm))
    return float(np.linalg.det(np.stack(cols, axis=1)))


def native_volume_ml(mask: sitk.Image, to_native: sitk.Transform | None = None, warp: sitk.Image | None = None) -> float:
    """Volume in mL of ``mask`` (nonzero = inside) in the patient's native space.

    A mask on an atlas grid covers ``|det J|`` times more native volume per voxel, ``J`` the
    Jacobian of the atlas -> native map ``x -> A(x + w(x))`` (``to_native`` = ``A``, the linear
    atlas -> native transform the registration wrote; ``warp`` = ``w``, its displacement field in
    mm, or ``None``): the volume is ``sum over mask voxels of voxel volume x |det A| x det(I + dw/dx)``.
    ``to_native=None``: the mask is already on a native-space grid (its voxel volume counts).
    """
    inside = sitk.GetArrayViewFromImage(mask) > 0
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    n = int(inside.sum())
    if to_native is None or n == 0:
        return n * voxel_ml
    com = np.argwhere(inside).mean(axis=0)[::-1]  # (x, y, z) continuous index
    det_a = abs(jacobian_determinant(to_native, mask.TransformContinuousIndexToPhysicalPoint([float(c) for c in com])))
    if warp is None or not np.any(sitk.GetArrayViewFromImage(warp)):
        return n * voxel_ml * det_a
    field = sitk.Cast(warp, sitk.sitkVectorFloat64)
    jac = sitk.Resample(sitk.DisplacementFieldJacobianDeterminant(field), mask, sitk.Transform(), sitk.sitkLinear, 1.0)
    return float(sitk.GetArrayViewFromImage(jac)[inside].sum()) * voxel_ml * det_a


def mask_qc(image: sitk.Image, mask: sitk.Image, out_png: str | Path, title: str = "",
            to_native: sitk.Transform | None = None, warp: sitk.Image | None = None) -> float:
    """Mask outline over the image on three planes through the mask's centre of mass.

    Args:
        image: 3-D image.
        mask: binary mask (nonzero = inside) on ``image``'s grid.
        out_png: PNG to write.
        title: figure title; the mask's native-space volume in mL (or "empty mask") is appended.
        to_native, warp: when ``image`` is on an atlas grid (after registration), the atlas ->
            native transform and warp (see :func:`native_volume_ml`); the figure then states the
            native volume (via the transform's Jacobian) and the atlas-grid one.

    Returns:
        The mask volume in mL in native space (0.0 for an empty mask).

    Raises:
        ValueError: ``mask`` not on ``image``'s grid.
    """
    _check_same_grid(image, mask, "mask")
    ci = to_canonical(sitk.Cast(image, sitk.sitkFloat32))
    arr = sitk.GetArrayFromImage(ci)
    inside = sitk.GetArrayFromImage(to_canonical(mask)) > 0
    n = int(inside.sum())
    if n:
        com_zyx = np.argwhere(inside).mean(axis=0)
        center = ci.TransformContinuousIndexToPhysicalPoint([float(c) for c in com_zyx[::-1]])
        ml = native_volume_ml(mask, to_native, warp)
        volume = f"brain {ml:.0f} mL" if ml >= 10 else f"brain {ml:.3g} mL"
        if to_native is None:
            volume += " (native space: counted on the scan's grid)"
        else:
            grid_ml = n * float(np.prod(ci.GetSpacing())) / 1000.0
            volume += (f" in native space\n(atlas grid {grid_ml:.0f} mL x |det J| of the atlas->native transform"
                       + (" and warp)" if warp is not None and np.any(sitk.GetArrayViewFromImage(warp)) else ")"))
        window = _window(arr[inside])
    else:
        ml, center, volume, window = 0.0, None, "empty mask", _window(arr[_foreground(arr)])
    idx, aspects = _index(ci, center), plane_aspects(image)
    fig, axes = _new_figure(1, 3)
    for col, (plane, aspect) in enumerate(zip(PLANES, aspects)):
        ax = axes[0, col]
        ax.imshow(_planes(arr, idx)[col], cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
        m2 = _planes(inside, idx)[col]
        if m2.any() and not m2.all():
            ax.contour(m2.astype(np.float32), levels=[0.5], colors=["#ff3030"], linewidths=1.0)
        _decorate(ax, plane, m2.shape, plane)
    _save(fig, out_png, f"{title}\n{volume}".strip())
    return ml


def montage_qc(images: Mapping[str, sitk.Image], out_png: str | Path, title: str = "") -> None:
    """All modalities of a case side by side on one axial slice, each in its own 1-99 % window.

    The slice passes through the centre of the first image's foreground (a world point, so
    modalities on different grids still show the same anatomy).

    Args:
        images: modality name -> 3-D image.
        out_png: PNG to write.
        title: figure title.

    Raises:
        ValueError: ``images`` is empty.
    """
    if not images:
        raise ValueError("images must hold at least one modality, got an empty mapping")
    first = to_canonical(sitk.Cast(next(iter(images.values())), sitk.sitkFloat32))
    fg = _foreground(sitk.GetArrayFromImage(first))
    center = first.TransformContinuousIndexToPhysicalPoint([float(c) for c in np.argwhere(fg).mean(axis=0)[::-1]])
    fig, axes = _new_figure(1, len(images))
    for ax, (name, img) in zip(axes[0], images.items()):
        canon = to_canonical(sitk.Cast(img, sitk.sitkFloat32))
        arr = sitk.GetArrayFromImage(canon)
        lo, hi = _window(arr[_foreground(arr)])
        axial = _planes(arr, _index(canon, center))[0]
        ax.imshow(axial, cmap="gray", vmin=lo, vmax=hi, aspect=plane_aspects(img)[0], interpolation="nearest")
        _decorate(ax, "axial", axial.shape, name)
    _save(fig, out_png, f"{title}  axial z = {center[2]:.0f} mm".strip())
