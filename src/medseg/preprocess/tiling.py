"""Tiling: turn a normalised atlas-space case into 2-D/2.5-D training slices.

A tile file is one ``.npy`` array ``(F * C + T, z, y, x)`` float16 -- the case's C image channels
as normalised for each of the F folds (fold-major), then the task's training target (T = K
region masks, or T = 1 map of class indices; :meth:`medseg.tasks.Task.encode`) -- memory-
mappable so training never loads a whole cohort, plus a JSON slice table with the axial slices
that hold brain (foreground of the images) and those that hold any label (for foreground
oversampling). One file per case
serves every fold (:class:`medseg.training.batches.TileSet` picks the fold's channels).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medseg.io import atomic_path, write_json
from medseg.tasks.definition import Task

log = logging.getLogger(__name__)


def tile_case(case: str, data: Mapping[str, np.ndarray], task: Task, out_npy: str | Path,
              out_json: str | Path) -> dict:
    """Write the tile array and slice table of one case.

    ``data`` is :func:`medseg.preprocess.stages.normalized_arrays`' result (or a loaded
    ``norm.npz``): ``image`` ``(F, C, z, y, x)`` (one normalisation per fold), ``brain`` and
    ``labels`` (required: only segmented cases are tiled).
    """
    if "labels" not in data:
        raise ValueError(f"case {case}: no labels; only cases with a segmentation can be tiled")
    target = task.encode(data["labels"])
    target = target if target.ndim == data["labels"].ndim + 1 else target[None]
    image = data["image"]
    n_folds, n_channels = image.shape[:2]
    arr = np.concatenate([image.reshape(n_folds * n_channels, *image.shape[2:]), target]).astype(np.float16)
    with atomic_path(out_npy, suffix=".npy") as tmp:
        np.save(tmp, arr)
    brain_slices = np.flatnonzero(data["brain"].any(axis=(1, 2)))
    fg_slices = np.flatnonzero((data["labels"] > 0).any(axis=(1, 2)))
    table = {"case": case, "shape": list(arr.shape), "n_image_channels": int(n_channels), "n_folds": int(n_folds),
             "n_target_channels": int(target.shape[0]), "target_kind": task.target_kind,
             "brain_slices": brain_slices.tolist(), "fg_slices": fg_slices.tolist()}
    write_json(table, out_json)
    log.info("tiled %s: %d brain slices, %d with a label", case, len(brain_slices), len(fg_slices))
    return table


def context_stack(volume: np.ndarray, z: int, context: int) -> np.ndarray:
    """2.5-D input for slice ``z``: channels of slices ``z-context .. z+context`` (edge-clamped).

    Args:
        volume: ``(C, Z, Y, X)``.
    Returns:
        ``(C * (2 * context + 1), Y, X)``, slice-major (all channels of z-context first).
    """
    idx = np.clip(np.arange(z - context, z + context + 1), 0, volume.shape[1] - 1)
    return volume[:, idx].transpose(1, 0, 2, 3).reshape(-1, *volume.shape[2:])


def context_volume(volume: np.ndarray, context: int) -> np.ndarray:
    """The 2.5-D stack for every slice at once: ``(C * (2c+1), Z, Y, X)`` matching :func:`context_stack`."""
    z = volume.shape[1]
    parts = [volume[:, np.clip(np.arange(z) + off, 0, z - 1)] for off in range(-context, context + 1)]
    return np.concatenate(parts, axis=0)
