"""The embedded demo cohort: deterministic synthetic BraTS cases on real anatomy.

Each case is a pure function of ``(seed, index)``: tumour(s) with mass effect on the canonical
head (:mod:`medseg.cohort.anatomy`), four modalities rendered from a tissue contrast table, a
random affine + smooth elastic deformation and a per-modality head motion, a multiplicative
bias field per modality, scanner scaling and Rician noise. Written in the BraTS 2021 layout
``images/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` with a ``truth/<case>/`` folder holding
what was applied (bias fields, transforms, true brain mask) so every stage can be scored.
"""
from __future__ import annotations

import functools
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from medseg.cohort.anatomy import HeadModel, load_head_model
from medseg.cohort.demo_config import FOV_KINDS, ORIENTATION_CODES, SynthConfig, check_scan_geometry  # noqa: F401
from medseg.cohort.tumour import LABELS, TumourSite, insert_tumour
from medseg.io import array_to_image, read_json, write_image, write_json

log = logging.getLogger(__name__)

MODALITIES = ("t1", "t1ce", "t2", "flair")
# relative intensities (DESIGN.md table): tissue -> (t1, t1ce, t2, flair)
CONTRAST = {
    "wm": (1.0, 1.0, 0.45, 0.65),
    "gm": (0.75, 0.75, 0.6, 0.8),
    "csf": (0.3, 0.3, 1.0, 0.15),
    "ED": (0.72, 0.72, 0.95, 1.05),
    "ET": (0.75, 1.6, 0.75, 0.9),
    "NCR": (0.35, 0.35, 1.1, 0.55),
    "head": (1.0, 1.0, 0.8, 0.7),
}
ORIENTATIONS = {  # DICOM orientation code -> direction matrix (ITK/LPS world)
    code: np.array(sitk.DICOMOrientImageFilter_GetDirectionCosinesFromOrientation(code)).reshape(3, 3)
    for code in ORIENTATION_CODES
}




def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(matrix: np.ndarray, translation: np.ndarray, centre: np.ndarray) -> sitk.AffineTransform:
    t = sitk.AffineTransform(3)
    t.SetMatrix(matrix.ravel().tolist())
    t.SetCenter(centre.tolist())
    t.SetTranslation(translation.tolist())
    return t


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], ctrl: int = 5) -> np.ndarray:
    """Smooth random field in [-1, 1]: separable low-frequency cosine basis, ``ctrl`` terms per axis."""
    coef = rng.standard_normal((ctrl,) * 3) / (1.0 + np.add.outer(np.add.outer(np.arange(ctrl), np.arange(ctrl)), np.arange(ctrl)))
    bases = [np.cos(np.pi * np.outer(np.linspace(0, 1, n), np.arange(ctrl))) for n in shape]
    field = np.einsum("ijk,zi,yj,xk->zyx", coef, *bases, optimize=True)
    field = field - field.mean()
    return field / max(np.abs(field).max(), 1e-6)


def _native_grid(cfg: SynthConfig, rng: np.random.Generator, centre_world: np.ndarray) -> sitk.Image:
    direction = ORIENTATIONS[cfg.orientations[int(rng.integers(len(cfg.orientations)))]]
    spacing = np.array(cfg.spacing_mm, float)
    size = np.round(np.array(cfg.fov_mm) / spacing).astype(int)
    ref = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    ref.SetSpacing(spacing.tolist())
    ref.SetDirection(direction.ravel().tolist())
    ref.SetOrigin((centre_world - direction @ ((size - 1) / 2 * spacing)).tolist())
    return ref


def _pitch(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _set_si_range(ref: sitk.Image, lo_mm: float, hi_mm: float) -> sitk.Image:
    """``ref`` with its head-foot (world z) axis re-cut to cover world z in [lo_mm, hi_mm]; other axes kept."""
    direction = np.asarray(ref.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction[2])))
    spacing = np.asarray(ref.GetSpacing())
    size = list(ref.GetSize())
    size[axis] = int(np.ceil((hi_mm - lo_mm) / spacing[axis])) + 1
    origin = np.asarray(ref.GetOrigin(), float)
    start = lo_mm if direction[2, axis] > 0 else hi_mm  # world z of index 0 along that axis
    origin = origin + direction[:, axis] * (start - origin[2]) / direction[2, axis]
    out = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    out.SetSpacing(ref.GetSpacing())
    out.SetDirection(ref.GetDirection())
    out.SetOrigin(origin.tolist())
    return out


def _fov(cfg: SynthConfig, index: int, rot: np.ndarray) -> tuple[str, np.ndarray, float]:
    """The case's FOV kind, its rotation (tilted: an extra 15-25 degree pitch) and the tilt in degrees."""
    if not cfg.fov_variety:
        return "standard", rot, 0.0
    kind = FOV_KINDS[index % len(FOV_KINDS)]
    if kind != "tilted":
        return kind, rot, 0.0
    frng = np.random.default_rng([cfg.seed, index, 16])  # its own stream: the rest of the case is unchanged
    tilt = float(frng.uniform(15, 25) * frng.choice([-1, 1]))
    return kind, rot @ _pitch(tilt), tilt


def _recut(kind: str, ref: sitk.Image, model: HeadModel, affine: sitk.Transform, native_centre: np.ndarray,
           seed: tuple[int, int]) -> tuple[sitk.Image, float]:
    """Neck: the FOV reaches 150 mm below the brain's centre (face, neck); vertex_cropped: the FOV's top
    is 3-12 mm below the brain's top (skull and some brain cut off). Returns the grid and the cut in mm."""
    if kind not in ("neck", "vertex_cropped"):
        return ref, 0.0
    zc = float(native_centre[2])
    if kind == "neck":
        return _set_si_range(ref, zc - 150.0, zc + 95.0), 0.0
    idx = np.argwhere(model.brain)[::50][:, ::-1]
    inv = affine.GetInverse()
    top = max(inv.TransformPoint(model.reference.TransformIndexToPhysicalPoint([int(v) for v in p]))[2] for p in idx)
    cut = float(np.random.default_rng([*seed, 17]).uniform(3, 12))
    extent = (ref.GetSize()[int(np.argmax(np.abs(np.asarray(ref.GetDirection()).reshape(3, 3)[2])))] - 1) * max(ref.GetSpacing())
    return _set_si_range(ref, top - cut - min(extent, 170.0), top - cut), cut


def _elastic(rng: np.random.Generator, ref: sitk.Image, magnitude_mm: float) -> sitk.DisplacementFieldTransform:
    coarse_spacing = 16.0
    size = [int(np.ceil(s * sp / coarse_spacing)) + 3 for s, sp in zip(ref.GetSize(), ref.GetSpacing())]
    grid = sitk.Image(size, sitk.sitkVectorFloat64, 3)
    grid.SetSpacing([coarse_spacing] * 3)
    grid.SetDirection(ref.GetDirection())
    grid.SetOrigin(ref.TransformContinuousIndexToPhysicalPoint([-1.5 * coarse_spacing / sp for sp in ref.GetSpacing()]))
    disp = np.stack([_smooth_field(rng, tuple(size[::-1]), ctrl=4) for _ in range(3)], axis=-1) * magnitude_mm
    field = sitk.GetImageFromArray(disp.astype(np.float64), isVector=True)
    field.CopyInformation(grid)
    return sitk.DisplacementFieldTransform(field)


def _render(model: HeadModel, wm, gm, csf, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    masks = {name: ndi.gaussian_filter((labels == LABELS[name]).astype(np.float32), 0.6) for name in ("ED", "ET", "NCR")}
    tumour = np.clip(sum(masks.values()), 0, 1)
    texture = ndi.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), 1.5)
    texture /= max(float(texture.std()), 1e-6)
    out = []
    for m in range(len(MODALITIES)):
        tissue = wm * CONTRAST["wm"][m] + gm * CONTRAST["gm"][m] + csf * CONTRAST["csf"][m]
        img = tissue * (1 - tumour) + sum(masks[k] * CONTRAST[k][m] for k in masks)
        img = img * (1 + (0.02 + 0.05 * tumour) * texture) + model.head * CONTRAST["head"][m]
        out.append(img.astype(np.float32))
    return out


@functools.lru_cache(maxsize=2)
def _brain_depth(model: HeadModel) -> np.ndarray:
    return ndi.distance_transform_edt(model.brain)


def generate_case(cfg: SynthConfig, index: int, images_dir: Path, truth_dir: Path) -> dict:
    """Generate case ``index`` and write its files; return its truth summary."""
    case = cfg.case_ids()[index]
    rng = np.random.default_rng([cfg.seed, index])
    model = load_head_model(float(max(1.0, 0.75 * min(cfg.spacing_mm))), cfg.anatomy)
    wm, gm, csf = model.wm.copy(), model.gm.copy(), model.csf.copy()
    depth = _brain_depth(model)
    canon_spacing = model.reference.GetSpacing()[0]
    site = TumourSite(wm, gm, csf, model.brain, depth, canon_spacing)
    labels = None
    for _ in range(1 + int(rng.random() < 0.2)):  # one in five cases is multi-focal
        labels = insert_tumour(rng, site, cfg.tumour_volume_ml, labels)
    channels = _render(model, wm, gm, csf, labels, rng)

    # geometry: native point p -> canonical point A(D(M_mod(p)))
    brain_idx = np.argwhere(model.brain).mean(0)[::-1]
    centre = np.array(model.reference.TransformContinuousIndexToPhysicalPoint(brain_idx.tolist()))
    rot = _rotation(rng, cfg.max_rotation_deg) * rng.uniform(0.93, 1.07)
    fov_kind, rot, tilt = _fov(cfg, index, rot)
    affine = _affine(rot, rng.uniform(-cfg.max_translation_mm, cfg.max_translation_mm, 3), centre)
    native_centre = np.array(affine.GetInverse().TransformPoint(centre.tolist()))
    ref = _native_grid(cfg, rng, native_centre)
    ref, cut = _recut(fov_kind, ref, model, affine, native_centre, (cfg.seed, index))
    elastic = _elastic(rng, ref, cfg.elastic_mm)

    def to_native(arr: np.ndarray, motion: sitk.Transform | None, interp) -> np.ndarray:
        img = array_to_image(arr, model.reference)
        comp = sitk.CompositeTransform([affine, elastic] + ([motion] if motion else []))
        return sitk.GetArrayFromImage(sitk.Resample(img, ref, comp, interp, 0.0))

    case_dir, tdir = images_dir / case, truth_dir / case
    scale = rng.uniform(300, 1500)
    truth = {"case": case, "orientation": None, "scale": scale, "motion": {}, "bias_log_max": {}, "anatomy": cfg.anatomy,
             "fov": fov_kind, "tilt_deg": tilt, "vertex_cut_mm": cut}
    for m, mod in enumerate(MODALITIES):
        motion = None
        if mod != "t1ce":
            motion = _affine(_rotation(rng, 2.0), rng.uniform(-2, 2, 3), native_centre)
            truth["motion"][mod] = {"matrix": list(motion.GetMatrix()), "translation": list(motion.GetTranslation()),
                                    "center": list(motion.GetCenter())}
        clean = to_native(channels[m], motion, sitk.sitkLinear)
        log_bias = cfg.bias_strength * _smooth_field(rng, clean.shape, ctrl=4)
        bias = np.exp(log_bias).astype(np.float32)
        sigma = rng.uniform(*cfg.noise)
        n1, n2 = rng.standard_normal((2, *clean.shape)).astype(np.float32) * sigma
        noisy = np.sqrt((clean * bias + n1) ** 2 + n2**2) * scale
        write_image(array_to_image(np.clip(np.round(noisy), 0, 32767).astype(np.int16), ref), case_dir / f"{case}_{mod}.nii.gz")
        write_image(array_to_image(bias, ref), tdir / f"bias_{mod}.nii.gz")
        truth["bias_log_max"][mod] = float(np.abs(log_bias).max())
    seg = to_native(labels, None, sitk.sitkNearestNeighbor).astype(np.uint8)
    write_image(array_to_image(seg, ref), case_dir / f"{case}_seg.nii.gz")
    brain = to_native(model.brain.astype(np.uint8), None, sitk.sitkNearestNeighbor)
    write_image(array_to_image(brain.astype(np.uint8), ref), tdir / "brain_mask.nii.gz")
    sitk.WriteTransform(affine, str(tdir / "affine.tfm"))
    write_image(elastic.GetDisplacementField(), tdir / "elastic_displacement.nii.gz")
    truth["orientation"] = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(ref.GetDirection())
    truth["wt_volume_ml"] = float((seg > 0).sum() * np.prod(ref.GetSpacing()) / 1000)
    write_json(truth, tdir / "truth.json")
    log.info("generated %s (%s, WT %.1f mL)", case, truth["orientation"], truth["wt_volume_ml"])
    return truth


def true_native_to_atlas(truth_case_dir: str | Path) -> sitk.Transform:
    """The applied mapping from a case's native (T1ce) world to the canonical ICBM152 world.

    Raises:
        ValueError: the case is of ``robex`` anatomy, which has no known correspondence with the atlas.
    """
    d = Path(truth_case_dir)
    anatomy = read_json(d / "truth.json").get("anatomy", "icbm")
    if anatomy != "icbm":
        raise ValueError(f"{d.name}: demo anatomy {anatomy!r} is not the atlas's: there is no true native -> atlas "
                         "mapping (score its registration by the NMI or the brain mask instead)")
    affine = sitk.ReadTransform(str(d / "affine.tfm"))
    field = sitk.ReadImage(str(d / "elastic_displacement.nii.gz"), sitk.sitkVectorFloat64)
    return sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(field)])


def true_head_motion(truth_case_dir: str | Path, modality: str) -> sitk.Transform:
    """The head motion applied to ``modality``: its point ``q`` shows what the reference shows at ``motion(q)``."""
    m = read_json(Path(truth_case_dir) / "truth.json")["motion"][modality]
    motion = sitk.AffineTransform(3)
    motion.SetMatrix(m["matrix"])
    motion.SetCenter(m["center"])
    motion.SetTranslation(m["translation"])
    return motion


def true_brain_mask(truth_case_dir: str | Path, modality: str, grid: sitk.Image) -> sitk.Image:
    """The true brain mask as seen in ``modality`` (head motion applied), on ``grid`` (UInt8)."""
    truth = Path(truth_case_dir)
    mask = sitk.ReadImage(str(truth / "brain_mask.nii.gz"), sitk.sitkUInt8)
    moved = modality in read_json(truth / "truth.json")["motion"]
    motion = true_head_motion(truth, modality) if moved else sitk.Transform()
    return sitk.Resample(mask, grid, motion, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def reorient_resample(image: sitk.Image, orientation: str, spacing_mm: tuple[float, float, float],
                      interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """``image`` reoriented (e.g. ``"LSA"``) and resampled to ``spacing_mm`` over the same extent:
    the orientation and anisotropy variants tests and benchmarks score against the same truth."""
    out = sitk.DICOMOrient(image, orientation)
    size = [int(round(n * s / t)) for n, s, t in zip(out.GetSize(), out.GetSpacing(), spacing_mm)]
    return sitk.Resample(out, size, sitk.Transform(), interpolator, out.GetOrigin(), spacing_mm, out.GetDirection())


def generate_cohort(cfg: SynthConfig, out_dir: str | Path, workers: int = 1) -> Path:
    """Write the whole cohort under ``out_dir`` (``images/``, ``truth/``, ``cohort.json``); return it."""
    out = Path(out_dir)
    images, truth = out / "images", out / "truth"
    args = [(cfg, i, images, truth) for i in range(cfg.n_cases)]
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_single_threaded) as pool:
            summaries = list(pool.map(_generate_star, args))
    else:
        summaries = [generate_case(*a) for a in args]
    manifest = {"config": asdict(cfg), "cases": [s["case"] for s in summaries], "convention": "2021",
                "modalities": list(MODALITIES), "layout": "brats2021"}
    write_json(manifest, out / "cohort.json")
    return out


def _single_threaded() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _generate_star(a: tuple) -> dict:
    return generate_case(*a)


