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
from medseg.preprocess.warp import moving_to_fixed
from medseg.tasks.definition import Task
from medseg.volume_inference import InferenceConfig, predict_volume

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


def predict_case(case: str, norm_npz: str, model_paths: Sequence[str], atlas_grid: str, transform: str | None,
                 native_image: str, task: Task, out_path: str, cfg: InferenceConfig,
                 out_probs: str | None = None, warp: str | None = None, native_channel: int | None = None) -> dict:
    """Predict ``case`` and write its native-space label map.

    Args:
        norm_npz: the case normalised with each fold's normaliser (``image`` is ``(F, C, z, y, x)``,
            fold k for ``model_paths[k]``).
        model_paths: one ``model.pt`` per fold.
        atlas_grid: an image on the atlas grid (the registered reference modality).
        transform: ``.tfm`` mapping atlas world -> native world (from registration; its affine part);
            ``None``: identity (no registration: ``atlas_grid`` is a native-space image).
        warp: displacement field on the atlas grid completing ``transform`` (``warp_atlas.nii.gz``;
            ``None`` or all zero: affine only).
        native_image: the case's original reference image (grid of the output); ``native_channel``:
            its channel in a 4-D source file.
        task: the dataset's task (activation, label values).
    """
    from medseg.train import load_model
    from medseg.volume_inference import resolve_device

    log.info("case %s: predicting on %s", case, resolve_device(cfg.device))
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
    probs = outside_is_background(probs / len(model_paths), fg, task.activation)
    grid = read_image(atlas_grid, case=case)
    native = read_source(native_image, case, native_channel)
    field = read_image(warp, case=case, pixel_type=sitk.sitkVectorFloat32) if warp else None
    affine = sitk.ReadTransform(transform) if transform else sitk.Transform(3, sitk.sitkIdentity)
    native_probs = to_native(probs, grid, moving_to_fixed(affine, field), native)
    if task.activation == "softmax":  # outside the working grid (resampled with 0): background
        native_probs[0][native_probs.sum(0) < 1e-6] = 1.0
    labels = task.decode(native_probs, cfg.threshold)
    write_image(array_to_image(labels, native), out_path)
    if out_probs:
        img = sitk.GetImageFromArray(np.moveaxis(native_probs, 0, -1).astype(np.float32), isVector=True)
        img.CopyInformation(native)
        write_image(img, out_probs)
    voxel_ml = float(np.prod(native.GetSpacing())) / 1000
    vols = {n: float(m.sum() * voxel_ml) for n, m in task.masks(labels).items()}
    log.info("case %s: predicted volumes (mL) %s", case, {k: round(v, 1) for k, v in vols.items()})
    return {"case": case, "volumes_ml": vols, "n_models": len(model_paths)}
