"""Inference for one case: ensemble the folds in atlas space, return to native space, write labels.

Region probabilities (WT, TC, ET) are averaged over folds, zeroed outside the (dilated) brain
mask, resampled back to the case's native
grid with the inverse of its atlas transform (the affine inverted exactly, a B-spline warp
numerically on the atlas grid; linear interpolation of probabilities, then the
threshold: smoother borders than nearest-neighbour on labels), nested (ET in TC in WT) and
written in the case's own BraTS label convention with the native image's geometry.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from medseg.io import array_to_image, read_image, write_image
from medseg.labels import regions_to_labels
from medseg.preprocess.warp import moving_to_fixed
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


def predict_case(case: str, norm_npz: str, model_paths: Sequence[str], atlas_grid: str, transform: str | None,
                 native_image: str, convention: str, out_path: str, cfg: InferenceConfig,
                 out_probs: str | None = None, warp: str | None = None) -> dict:
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
        native_image: the case's original reference image (grid of the output).
        convention: BraTS label convention of the case (``2021`` or ``2023``).
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
        p = predict_volume([model], fold_image, meta["context"], cfg)
        probs = p if probs is None else probs + p
    # tumour lies inside the brain: drop predictions outside the (slightly dilated) brain mask
    brain = ndi.binary_dilation(data["brain"] > 0, iterations=2)
    probs = probs / len(model_paths) * brain[None]
    grid = read_image(atlas_grid, case=case)
    native = read_image(native_image, case=case)
    field = read_image(warp, case=case, pixel_type=sitk.sitkVectorFloat32) if warp else None
    affine = sitk.ReadTransform(transform) if transform else sitk.Transform(3, sitk.sitkIdentity)
    native_probs = to_native(probs, grid, moving_to_fixed(affine, field), native)
    labels = regions_to_labels(native_probs > cfg.threshold, convention)
    write_image(array_to_image(labels, native), out_path)
    if out_probs:
        img = sitk.GetImageFromArray(np.moveaxis(native_probs, 0, -1).astype(np.float32), isVector=True)
        img.CopyInformation(native)
        write_image(img, out_probs)
    vols = {r: float((native_probs[i] > cfg.threshold).sum() * np.prod(native.GetSpacing()) / 1000) for i, r in enumerate(("WT", "TC", "ET"))}
    log.info("case %s: predicted volumes (mL) %s", case, {k: round(v, 1) for k, v in vols.items()})
    return {"case": case, "volumes_ml": vols, "n_models": len(model_paths)}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment one preprocessed case with trained fold models")
    p.add_argument("--norm", required=True, help="normalised case .npz (every fold's normalisation)")
    p.add_argument("--models", nargs="+", required=True, help="model.pt per fold (same order)")
    p.add_argument("--atlas-grid", required=True, help="image on the atlas grid (e.g. reg_t1ce.nii.gz)")
    p.add_argument("--transform", required=True, help="atlas -> native transform (.tfm)")
    p.add_argument("--warp", help="atlas-grid displacement field completing --transform (warp_atlas.nii.gz)")
    p.add_argument("--native", required=True, help="native reference image (output grid)")
    p.add_argument("--convention", default="2021", choices=["2021", "2023"])
    p.add_argument("--out", required=True)
    p.add_argument("--case", default="case")
    p.add_argument("--tta", action="store_true")
    p.set_defaults(func=_cli)


def _cli(a: argparse.Namespace) -> int:
    predict_case(a.case, a.norm, a.models, a.atlas_grid, a.transform, a.native, a.convention, a.out, InferenceConfig(tta=a.tta),
                 warp=a.warp)
    return 0
