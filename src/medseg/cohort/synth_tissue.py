"""The second embedded demo: brain-tissue segmentation (T1 -> CSF, GM, WM) in the Decathlon layout.

Not BraTS-shaped on purpose: one modality, three mutually exclusive labels (softmax), some test
cases without label maps, and a layout (``dataset.json`` + ``imagesTr/``, ``labelsTr/``,
``imagesTs/``) read like any user's Decathlon folder. Anatomy is real: the ICBM152 GM/WM/CSF
probability maps and the ROBEX head (:mod:`medseg.cohort.anatomy`); each case gets a random
affine and elastic deformation, its own tissue contrast, a multiplicative bias field, Rician
noise and a random scanner orientation (as the BraTS demo does), and the label map is the
most probable tissue of each voxel, deformed with the image. The generic preprocessing recipe
(no atlas) segments it, so no score here is inflated by a shared atlas.
"""
from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from medseg.cohort.anatomy import load_head_model
from medseg.cohort.demo_config import TISSUE_LABELS as LABELS, TissueSynthConfig  # noqa: F401
from medseg.cohort.synth import _affine, _elastic, _native_grid, _rotation, _single_threaded, _smooth_field
from medseg.io import array_to_image, write_image, write_json

log = logging.getLogger(__name__)

T1_CONTRAST = {"wm": 1.0, "gm": 0.72, "csf": 0.28, "head": 0.9}


def tissue_labels(wm: np.ndarray, gm: np.ndarray, csf: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Most probable tissue per brain voxel (1 CSF, 2 GM, 3 WM); 0 outside the brain or where no tissue is likely."""
    probs = np.stack([csf, gm, wm])
    labels = (np.argmax(probs, 0) + 1).astype(np.uint8)
    labels[~brain | (probs.max(0) < 0.3)] = 0
    return labels


def generate_tissue_case(cfg: TissueSynthConfig, index: int, root: Path) -> dict:
    """Generate case ``index``: its T1 (and label map if labelled); return a summary."""
    case = cfg.case_ids()[index]
    rng = np.random.default_rng([cfg.seed, index, 7])
    model = load_head_model(float(max(1.0, 0.75 * min(cfg.spacing_mm))))
    labels = tissue_labels(model.wm, model.gm, model.csf, model.brain)
    c = {k: v * (1 + rng.uniform(-cfg.contrast_jitter, cfg.contrast_jitter)) for k, v in T1_CONTRAST.items()}
    texture = ndi.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), 1.2)
    texture /= max(float(texture.std()), 1e-6)
    t1 = (model.wm * c["wm"] + model.gm * c["gm"] + model.csf * c["csf"]) * (1 + 0.03 * texture) + model.head * c["head"]

    brain_idx = np.argwhere(model.brain).mean(0)[::-1]
    centre = np.array(model.reference.TransformContinuousIndexToPhysicalPoint(brain_idx.tolist()))
    rot = _rotation(rng, cfg.max_rotation_deg) * rng.uniform(0.92, 1.08)
    affine = _affine(rot, rng.uniform(-cfg.max_translation_mm, cfg.max_translation_mm, 3), centre)
    ref = _native_grid(cfg, rng, np.array(affine.GetInverse().TransformPoint(centre.tolist())))
    chain = sitk.CompositeTransform([affine, _elastic(rng, ref, cfg.elastic_mm)])

    def to_native(arr: np.ndarray, interp) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.Resample(array_to_image(arr, model.reference), ref, chain, interp, 0.0))

    clean = to_native(t1.astype(np.float32), sitk.sitkLinear)
    bias = np.exp(cfg.bias_strength * _smooth_field(rng, clean.shape, ctrl=4)).astype(np.float32)
    sigma = rng.uniform(*cfg.noise)
    n1, n2 = rng.standard_normal((2, *clean.shape)).astype(np.float32) * sigma
    scan = np.sqrt((clean * bias + n1) ** 2 + n2**2) * rng.uniform(400, 2000)
    labelled = cfg.labelled(case)
    files = cfg.files(root)[case]
    write_image(array_to_image(np.clip(np.round(scan), 0, 32767).astype(np.int16), ref), files.images["t1"])
    if labelled:
        seg = to_native(labels, sitk.sitkNearestNeighbor).astype(np.uint8)
        write_image(array_to_image(seg, ref), files.seg)
    orientation = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(ref.GetDirection())
    log.info("generated %s (%s, %s)", case, orientation, "labelled" if labelled else "unlabelled")
    return {"case": case, "labelled": labelled, "orientation": orientation}


def generate_tissue_cohort(cfg: TissueSynthConfig, out_dir: str | Path, workers: int = 1) -> Path:
    """Write the cohort in the Decathlon layout under ``out_dir`` (+ ``cohort.json``); return it."""
    root = Path(out_dir)
    args = [(cfg, i, root) for i in range(cfg.n_cases)]
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_single_threaded) as pool:
            summaries = list(pool.map(_generate_star, args))
    else:
        summaries = [generate_tissue_case(*a) for a in args]
    files = cfg.files(root)
    rel = lambda p: "./" + str(Path(p).relative_to(root))  # noqa: E731
    write_json({"name": "medseg tissue demo", "description": "T1 brain tissue (ICBM152 anatomy, synthetic scans)",
                "tensorImageSize": "3D", "modality": {"0": "T1"},
                "labels": {"0": "background", **{str(v): k for k, v in LABELS.items()}},
                "numTraining": sum(s["labelled"] for s in summaries), "numTest": cfg.n_unlabelled,
                "training": [{"image": rel(f.images["t1"]), "label": rel(f.seg)} for f in files.values() if f.seg],
                "test": [rel(f.images["t1"]) for f in files.values() if not f.seg]}, root / "dataset.json")
    write_json({"config": asdict(cfg), "cases": [s["case"] for s in summaries], "layout": "msd"}, root / "cohort.json")
    return root


def _generate_star(a: tuple) -> dict:
    return generate_tissue_case(*a)
