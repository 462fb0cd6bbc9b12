"""Inference for one case: ensemble the folds in the working space, return to native space, write labels.

Probabilities (sigmoid regions or softmax labels, from the task) are averaged over folds, set
to background outside the (dilated) foreground mask (the brain, or the voxels nonzero in any
modality), resampled back to the case's native grid (with the inverse of its atlas transform:
the affine inverted exactly, a B-spline warp numerically on the atlas grid; without
registration through physical coordinates alone), linearly interpolated as probabilities, then
decoded into the task's own label values (:meth:`medseg.tasks.Task.decode`: thresholded and
nested regions, or the most probable label) and written with the native image's geometry.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from medseg.cohort.sources import read_source
from medseg.io import array_to_image, read_image, write_image
from medseg.models.checkpoint import load_model
from medseg.inference.device import resolve_device
from medseg.preprocess.case import CaseJob
from medseg.preprocess.config import NativeStage
from medseg.preprocess.warp import moving_to_fixed
from medseg.tasks.definition import Task
from medseg.inference.config import InferenceConfig
from medseg.inference.volume import predict_volume

log = logging.getLogger(__name__)


def to_native(probs: np.ndarray, atlas_grid: sitk.Image, native_to_atlas: sitk.Transform, native: sitk.Image) -> np.ndarray:
    """Resample ``(K, z, y, x)`` atlas-space probabilities onto the ``native`` grid (linear).

    ``native_to_atlas``: native world -> atlas world, from :func:`medseg.preprocess.warp.moving_to_fixed`.
    """
    out = []
    for k in range(probs.shape[0]):
        img = array_to_image(probs[k].astype(np.float32), atlas_grid)
        out.append(sitk.GetArrayFromImage(sitk.Resample(img, native, native_to_atlas, sitk.sitkLinear, 0.0, sitk.sitkFloat32)))
    return np.stack(out)


def outside_is_background(probs: np.ndarray, mask: np.ndarray, activation: str) -> np.ndarray:
    """``probs`` ``(K, ...)`` with every voxel outside ``mask`` set to background (in place)."""
    probs[:, ~mask] = 0.0
    if activation == "softmax":
        probs[0, ~mask] = 1.0
    return probs


def ensemble(case: str, norm_npz: str, model_paths: Sequence[str], cfg: InferenceConfig, task: Task) -> np.ndarray:
    """Fold-averaged probabilities ``(K, z, y, x)`` in the working space, background outside the
    (dilated) foreground mask.

    ``norm_npz``: the case normalised with each fold's normaliser (``image`` ``(F, C, z, y, x)``,
    fold k for ``model_paths[k]``, and ``brain``).
    """
    data = np.load(norm_npz)
    image = data["image"]
    if image.ndim != 5 or len(image) != len(model_paths):
        raise ValueError(f"case {case}: {norm_npz} holds image {image.shape}, expected (folds, C, z, y, x) "
                         f"with one fold per model ({len(model_paths)})")
    probs = None
    for fold_image, mpath in zip(image, model_paths):
        model, meta = load_model(mpath)
        trained = Task.from_dict(meta["task"]) if meta.get("task") else task
        if dict(trained.labels) != dict(task.labels):
            log.warning("case %s: %s was trained with labels %s, the dataset's are %s", case, mpath,
                        dict(trained.labels), dict(task.labels))
        p = predict_volume([model], fold_image, meta["context"], cfg, task.activation)
        probs = p if probs is None else probs + p
    # structures lie inside the brain / imaged foreground: drop predictions outside the (dilated) mask
    fg = ndi.binary_dilation(data["brain"] > 0, iterations=2)
    return outside_is_background(probs / len(model_paths), fg, task.activation)


def predict_case(job: CaseJob, stage: NativeStage, model_paths: Sequence[str], cfg: InferenceConfig, task: Task,
                 out_path: str) -> dict:
    """Predict the case from its ``norm.npz`` and write its label map on its native grid.

    The working space is the ``stage.stage`` folder's grid (the reference image there); with
    registration the probabilities return through the inverse of the case's atlas transform
    (``tfm_atlas.tfm``: the affine, inverted exactly; ``warp_atlas.nii.gz``: a B-spline warp,
    inverted numerically on the atlas grid), else through physical coordinates alone. Labels are
    decoded in the task's own values (thresholded nested regions, or the most probable label) and
    written with the native reference image's geometry (its channel of a 4-D source file).
    """
    case, folder, ref = job.case, job.folder, stage.reference
    log.info("case %s: predicting on %s", case, resolve_device(cfg.device))
    probs = ensemble(case, folder.norm, model_paths, cfg, task)
    grid = read_image(folder.images(stage.stage, [ref])[ref], case=case)
    native = read_source(job.images[ref], case, job.channels.get(ref))
    if stage.registered:
        affine = sitk.ReadTransform(folder.atlas_transform)
        field = read_image(folder.atlas_warp, case=case, pixel_type=sitk.sitkVectorFloat32)
    else:
        affine, field = sitk.Transform(3, sitk.sitkIdentity), None
    native_probs = to_native(probs, grid, moving_to_fixed(affine, field), native)
    if task.activation == "softmax":  # outside the working grid (resampled with 0): background
        native_probs[0][native_probs.sum(0) < 1e-6] = 1.0
    labels = task.decode(native_probs, cfg.threshold)
    write_image(array_to_image(labels, native), out_path)
    voxel_ml = float(np.prod(native.GetSpacing())) / 1000
    vols = {n: float(m.sum() * voxel_ml) for n, m in task.masks(labels).items()}
    log.info("case %s: predicted volumes (mL) %s", case, {k: round(v, 1) for k, v in vols.items()})
    return {"case": case, "volumes_ml": vols, "n_models": len(model_paths)}
