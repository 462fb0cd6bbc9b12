"""Small generated folders in the PROMISE12 and ACDC layouts, for testing their readers and recipes.

Not demos (nothing here is meant to be looked at as a result): each folder is written exactly
as the challenge's download lays it out, with the quirks the readers must handle, and the
anatomy is just realistic enough for a few training steps to find it.

* :func:`write_promise12`: flat MetaImage folder (``CaseNN.mhd`` + ``.raw``, int16;
  ``CaseNN_segmentation.mhd``, uint8 0/1); a prostate-like ellipsoid (bright peripheral zone,
  darker nodular central gland) between bladder (bright fluid, anterior-superior), rectum
  (posterior, dark air) and pelvic side walls (obturator muscles, femoral heads), under an
  endorectal-coil-like bias (bright near the rectum) and Rician-like noise. Per case its own
  in-plane pixel size (1.2-1.6 mm) and slice thickness (2.5-4 mm). ``split_folders``: the
  training and test cases in two sub-folders reusing the ids, as the challenge's archives do.
* :func:`write_acdc`: ``training/patientNNN/`` and ``testing/patientNNN/`` with ``Info.cfg``,
  a 4-D cine ``patientNNN_4d.nii.gz`` and its ED and ES frames with ``_gt`` label maps (1 RV
  cavity, 2 LV myocardium, 3 LV cavity; testing patients have no ``_gt`` and no ``Group``, as
  the challenge's test set). A short-axis heart: LV as a truncated ellipsoid (base to apex),
  myocardium of constant cross-sectional area (it thickens as the cavity shrinks), RV crescent
  on the septal side ending before the apex; the cavity follows the cardiac cycle (ED = frame 1,
  ES at ~40 % of the cycle, ejection fraction by pathology group). Thick slices (5-10 mm,
  partial volume averaged over the slab) and per-patient in-plane grids (1.3-1.8 mm).

Geometry: axis-aligned directions (ITK identity), per-case origin; deterministic in ``seed``.
``python -m medseg.cohort.phantoms {promise12,acdc} OUT`` writes one.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

#: ACDC pathology groups: (LV end-diastolic radius mm, wall mm, ejection fraction, RV scale)
ACDC_GROUPS = {"NOR": (24.0, 8.0, 0.62, 1.0), "DCM": (31.0, 6.0, 0.2, 1.0), "HCM": (20.0, 14.0, 0.72, 0.9),
               "MINF": (28.0, 7.0, 0.35, 1.0), "RV": (23.0, 8.0, 0.58, 1.5)}


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _grid(shape_zyx: tuple[int, int, int], spacing_xyz: tuple[float, float, float],
          centre_xyz: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Physical coordinates (mm, relative to ``centre_xyz``) of the voxel centres, each ``(Z, Y, X)``."""
    axes = [(np.arange(n) - (n - 1) / 2) * s - c for n, s, c in zip(shape_zyx[::-1], spacing_xyz, centre_xyz)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return x, y, z


def _ellipsoid(x, y, z, centre, radii) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2


def _noisy(signal: np.ndarray, rng: np.random.Generator, sigma: float, scale: float) -> np.ndarray:
    """Rician-like magnitude noise, scanner scaling, int16."""
    noisy = np.hypot(signal + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape))
    return np.clip(np.rint(noisy * scale), 0, 32767).astype(np.int16)


def _image(arr: np.ndarray, spacing_xyz, origin_xyz) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([float(s) for s in spacing_xyz])
    img.SetOrigin([float(o) for o in origin_xyz])
    return img


# ---- PROMISE12 ---------------------------------------------------------------------------------------
def _pelvis(x, y, z, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """T2 signal (about 0..1) and prostate mask of a pelvis around the origin (x left, y posterior, z superior)."""
    sig = np.full(x.shape, 0.55) + 0.08 * ndi.gaussian_filter(rng.normal(size=x.shape), 2)  # fat and fascia
    for side in (-1, 1):
        muscle = _ellipsoid(x, y, z, (side * 38, 0, 0), (10, 28, 60)) < 1  # obturator internus
        sig[muscle] = 0.3
        head = np.hypot(x - side * 62, y - 5)
        sig[head < 22] = 0.6  # femoral head: fatty marrow
        sig[(head >= 19) & (head < 22)] = 0.08  # cortical bone
    bladder = _ellipsoid(x, y, z, (0, -28 + rng.uniform(-4, 4), 30), (32, 24, 22)) < 1
    sig[bladder] = 1.0
    rect = np.hypot(x - rng.uniform(-3, 3), y - 30)
    sig[rect < 14] = 0.25  # rectal wall
    sig[rect < 9] = 0.04  # air / endorectal balloon
    radii = np.array([22.0, 16.0, 18.0]) * rng.uniform(0.85, 1.15, 3)
    centre = (rng.uniform(-3, 3), rng.uniform(-2, 2) + 4, rng.uniform(-4, 4))
    q = _ellipsoid(x, y, z, centre, radii)
    prostate = q < 1
    central = _ellipsoid(x, y, z, (centre[0], centre[1] - 3, centre[2] + 2), radii * 0.62) < 1
    nodules = 0.1 * ndi.gaussian_filter(rng.normal(size=x.shape), 1.2)
    sig[prostate] = 0.78  # peripheral zone: bright
    sig[central] = 0.42 + nodules[central]  # transition zone: darker, nodular
    bias = (1 + 1.8 * np.exp(-np.maximum(rect - 9, 0) / 22)) * (1 + 0.15 * x / 60)  # endorectal coil
    return np.clip(sig, 0, None) * bias, prostate


def _promise12_case(case_seed: tuple[int, int], size: int) -> tuple[sitk.Image, sitk.Image]:
    rng = _rng(*case_seed)
    pix, thick = rng.uniform(1.2, 1.6), rng.uniform(2.5, 4.0)
    nz = int(np.clip(round(60 / thick), 14, 24))
    spacing = (pix, pix, thick)
    x, y, z = _grid((nz, size, size), spacing, (rng.uniform(-6, 6), rng.uniform(-6, 6), rng.uniform(-4, 4)))
    sig, prostate = _pelvis(x, y, z, rng)
    sig = ndi.gaussian_filter(sig, (0.3, 0.7, 0.7))
    origin = tuple(rng.uniform(-120, -60, 3))
    image = _image(_noisy(sig, rng, 0.03, rng.uniform(400, 1500)), spacing, origin)
    seg = _image(prostate.astype(np.uint8), spacing, origin)
    return image, seg


def write_promise12(out: str | Path, n_labelled: int = 4, n_unlabelled: int = 1, seed: int = 0, size: int = 64,
                    split_folders: bool = False) -> dict:
    """Write a PROMISE12 folder: ``n_labelled`` training cases with segmentation, ``n_unlabelled`` without.

    Args:
        out: the folder (created).
        size: in-plane matrix (pixels); 14-24 slices.
        split_folders: training cases in ``TrainingData_Part1/`` and test cases in ``TestData/``,
            both numbered from ``Case00`` (the ids collide, as in the challenge's downloads).

    Returns:
        A manifest ``{"labelled": [...], "unlabelled": [...]}`` of the file stems written.
    """
    out = Path(out)
    made: dict[str, list[str]] = {"labelled": [], "unlabelled": []}
    for kind, n, offset in (("labelled", n_labelled, 0), ("unlabelled", n_unlabelled, n_labelled)):
        folder = out / ("TrainingData_Part1" if kind == "labelled" else "TestData") if split_folders else out
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            number = i if split_folders else offset + i
            image, seg = _promise12_case((seed, offset + i), size)
            sitk.WriteImage(image, str(folder / f"Case{number:02d}.mhd"))
            if kind == "labelled":
                sitk.WriteImage(seg, str(folder / f"Case{number:02d}_segmentation.mhd"))
            made[kind].append(str((folder / f"Case{number:02d}").relative_to(out)))
    return made


# ---- ACDC --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Heart:
    """One patient's heart in the short-axis frame (mm; x, y in-plane, z from base to apex)."""

    lv_radius: float
    wall: float
    ejection: float
    rv_scale: float
    length: float
    rv_angle: float
    centre: tuple[float, float]


def _cycle(t: int, n_frames: int, es: int) -> float:
    """Contraction 0 (ED, frame 1) .. 1 (ES) .. back towards 0 at the end of the cycle."""
    if t <= es:
        return 0.5 * (1 - np.cos(np.pi * (t - 1) / max(es - 1, 1)))
    return 0.5 * (1 + np.cos(np.pi * (t - es) / max(n_frames + 1 - es, 1)))


def _taper(z: np.ndarray, length: float) -> np.ndarray:
    """Radius factor of a half ellipsoid from the base (z = 0, 1) to its tip (z = length, 0); 0 above the base."""
    return np.where(z >= 0, np.sqrt(np.clip(1 - (z / length) ** 2, 0, 1)), 0.0)


def _heart_frame(h: Heart, x, y, z, contraction: float) -> tuple[np.ndarray, np.ndarray]:
    """bSSFP signal and labels (1 RV, 2 MYO, 3 LV) of one cardiac phase on coordinates ``(Z, Y, X)``."""
    length = h.length * (1 - 0.12 * contraction)  # longitudinal shortening
    squeeze = np.sqrt(1 - h.ejection * contraction)  # cavity radius factor
    r_cav = h.lv_radius * squeeze * _taper(z, length)
    # the myocardium keeps its cross-sectional area: it thickens as the cavity shrinks
    r_epi = np.sqrt((h.lv_radius * squeeze) ** 2 + (h.lv_radius + h.wall) ** 2 - h.lv_radius**2) * _taper(z, length + h.wall)
    cx, cy = h.centre
    r = np.hypot(x - cx, y - cy)
    lv = r < r_cav
    myo = ~lv & (r < r_epi)
    inside = r_epi > 0
    ux, uy = np.cos(h.rv_angle), np.sin(h.rv_angle)
    along, across = (x - cx) * ux + (y - cy) * uy, -(x - cx) * uy + (y - cy) * ux
    a = h.rv_scale * (0.5 * h.lv_radius + 8) * _taper(z, 0.75 * length) * np.sqrt(1 - 0.5 * h.ejection * contraction)
    ell = ((along - 0.55 * (r_epi + a)) / np.maximum(a, 1e-3)) ** 2 + (across / np.maximum(1.6 * a, 1e-3)) ** 2
    rv = (ell < 1) & (r > r_epi + 2.5) & (a > 2)
    labels = np.zeros(x.shape, np.uint8)
    labels[rv], labels[myo], labels[lv] = 1, 2, 3
    sig = np.full(x.shape, 0.32)  # chest wall, mediastinum
    sig[np.hypot(x - cx + 80, y - cy - 20) < 30] = 0.04  # lungs either side
    sig[np.hypot(x - cx - 55, y - cy - 10) < 34] = 0.04
    sig[np.hypot(x - cx - 8, y - cy - 42) < 11] = 0.95  # descending aorta
    sig[(r < r_epi + 2) & inside] = 0.8  # epicardial fat
    sig[rv], sig[myo], sig[lv] = 0.95, 0.28, 1.0
    sig[(z > length + h.wall + 10) & (y - cy > -20)] = 0.38  # liver below the apex
    return sig, labels


def _slab(h: Heart, shape, spacing, offset, contraction: float) -> tuple[np.ndarray, np.ndarray]:
    """A thick-slice frame: signal averaged over 3 samples through each slab, labels at its centre."""
    nz, ny, nx = shape
    fine = (nz * 3, ny, nx)
    x, y, z = _grid(fine, (spacing[0], spacing[1], spacing[2] / 3), offset)
    sig, _ = _heart_frame(h, x, y, z, contraction)
    x, y, z = _grid(shape, spacing, offset)
    _, labels = _heart_frame(h, x, y, z, contraction)
    return sig.reshape(nz, 3, ny, nx).mean(1), labels


def _acdc_patient(seed: int, index: int, group: str, n_frames: int, size: int) -> tuple[list[np.ndarray], list, dict]:
    """(frames as int16 ``(Z, Y, X)``, label maps per frame, geometry) of one patient."""
    rng = _rng(seed, 1000 + index)
    r, w, ef, rv = ACDC_GROUPS[group]
    h = Heart(r * rng.uniform(0.9, 1.1), w * rng.uniform(0.9, 1.1), ef, rv, rng.uniform(75, 90),
              rng.uniform(0.85, 1.25) * np.pi, (rng.uniform(8, 16), rng.uniform(-6, 6)))
    pix, thick = rng.uniform(1.3, 1.8), float(rng.choice([5.0, 6.5, 8.0, 10.0]))
    nz = int(np.clip(round((h.length + 25) / thick), 6, 16))
    shape = (nz, size + int(rng.integers(-4, 5)), size + int(rng.integers(-4, 5)))
    offset = (0.0, 0.0, 10 - (nz - 1) / 2 * thick)  # slice k at z = k * thick - 10: the first 10 mm above the base
    es = max(2, int(round(0.4 * n_frames)) + 1)
    scale, bias = rng.uniform(200, 900), 1 + 0.3 * np.linspace(-1, 1, shape[2])[None, None, :]
    frames, labels = [], []
    for t in range(1, n_frames + 1):
        sig, lab = _slab(h, shape, (pix, pix, thick), offset, _cycle(t, n_frames, es))
        sig = ndi.gaussian_filter(sig, (0, 0.6, 0.6)) * bias
        frames.append(_noisy(sig, _rng(seed, 1000 + index, t), 0.04, scale))
        labels.append(lab)
    return frames, labels, {"spacing": (pix, pix, thick), "origin": tuple(rng.uniform(-150, -50, 3)), "es": es}


def _info_cfg(ed: int, es: int, group: str | None, n_frames: int, rng: np.random.Generator) -> str:
    lines = [f"ED: {ed}", f"ES: {es}"] + ([f"Group: {group}"] if group else [])
    lines += [f"Height: {rng.uniform(150, 195):.1f}", f"NbFrame: {n_frames}", f"Weight: {rng.uniform(50, 110):.1f}"]
    return "\n".join(lines) + "\n"


def _write_patient(folder: Path, pid: str, frames: list, labels: list, geo: dict, labelled: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sp, origin = geo["spacing"], geo["origin"]
    cine = sitk.JoinSeries([_image(f, sp, origin) for f in frames])  # (x, y, z, t)
    sitk.WriteImage(cine, str(folder / f"{pid}_4d.nii.gz"))
    for n in (1, geo["es"]):
        sitk.WriteImage(_image(frames[n - 1], sp, origin), str(folder / f"{pid}_frame{n:02d}.nii.gz"))
        if labelled:
            sitk.WriteImage(_image(labels[n - 1], sp, origin), str(folder / f"{pid}_frame{n:02d}_gt.nii.gz"))
    (folder / "MANDATORY_CITATION.md").write_text("Phantom in the ACDC layout (medseg.cohort.phantoms); not ACDC data.\n")


def write_acdc(out: str | Path, n_labelled: int = 4, n_unlabelled: int = 1, seed: int = 0, n_frames: int = 8,
               size: int = 64) -> dict:
    """Write an ACDC folder: ``n_labelled`` patients in ``training/`` (ED and ES with ``_gt``),
    ``n_unlabelled`` in ``testing/`` (no ``_gt``, no ``Group``), each with ``n_frames`` cine frames.

    Returns:
        A manifest ``{patient: {"subset", "group", "ED", "ES", "spacing_mm", "lv_ml": {ED, ES}}}``.
    """
    out, groups, made = Path(out), list(ACDC_GROUPS), {}
    for i in range(n_labelled + n_unlabelled):
        labelled = i < n_labelled
        pid = f"patient{i + 1 if labelled else 101 + i - n_labelled:03d}"
        group = groups[i % len(groups)]
        frames, labels, geo = _acdc_patient(seed, i, group, n_frames, size)
        subset = "training" if labelled else "testing"
        _write_patient(out / subset / pid, pid, frames, labels, geo, labelled)
        info = _info_cfg(1, geo["es"], group if labelled else None, n_frames, _rng(seed, 2000 + i))
        (out / subset / pid / "Info.cfg").write_text(info)
        voxel_ml = float(np.prod(geo["spacing"])) / 1000
        made[pid] = {"subset": subset, "group": group, "ED": 1, "ES": geo["es"], "spacing_mm": list(geo["spacing"]),
                     "lv_ml": {p: float((labels[n - 1] == 3).sum() * voxel_ml) for p, n in (("ED", 1), ("ES", geo["es"]))}}
    return made


def main(argv: list[str] | None = None) -> int:
    """``python -m medseg.cohort.phantoms {promise12,acdc} OUT [--labelled N --unlabelled N --seed S]``."""
    ap = argparse.ArgumentParser(description="write a small PROMISE12 or ACDC phantom folder (for tests)")
    ap.add_argument("layout", choices=["promise12", "acdc"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--labelled", type=int, default=4, help="labelled cases (PROMISE12) or patients (ACDC)")
    ap.add_argument("--unlabelled", type=int, default=1, help="unlabelled test cases or patients")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    write = write_promise12 if a.layout == "promise12" else write_acdc
    print(json.dumps(write(a.out, a.labelled, a.unlabelled, a.seed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
