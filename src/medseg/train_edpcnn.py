"""Training loop of the model key ``edpcnn`` (Nguyen & Ray's Algorithm 2) on the workflow's tiles.

:func:`medseg.train.train` hands EDPCNN configs to :func:`train_edpcnn`, which takes the same
inputs (tiles of :class:`medseg.data.TileSet`, the task, ``training`` and ``inference``
configs) and writes the same outputs (``model.pt`` with ``meta`` incl. the task,
``checkpoint.pt``, ``best_weights.pt``, ``metrics.csv``, ``curves.png``, ``summary.json``), so
the workflow's ``train_model`` and ``predict_case`` rules run it unchanged.

Target: ONE star-shaped binary object per 2-D slice (:func:`medseg.edpcnn_inference.object_mask`):
the task's largest region (the one the others nest in; BraTS: WT, the whole tumour) for region
tasks, the union of all labels for label tasks; the trainer records its output channel in the
model config (``object_channel``). Slices are drawn by :func:`medseg.data.make_batch` as for the U-Net
(``training.fg_prob`` of them hold the object; the others have an empty mask and train only the
U-Net's centre loss, see :func:`medseg.models.edpcnn.train_step`), with ``training.context``,
``patch_size`` and ``augment``.

Optimisers: the paper's two Adams with the model's ``lr`` / ``sg_lr`` (constant, as in Sec. 3.3);
``training.lr``, ``weight_decay``, ``schedule``, ``warmup``, ``loss``, ``grad_clip`` and
``amp`` are not used. Validation (every ``val_every`` steps and at the end) is the Dice of the
object on whole validation volumes predicted as at inference
(:func:`medseg.edpcnn_inference.predict_volume_edpcnn`, centres from the U-Net's output); the
best validation weights are the result, as for the U-Net.

Resuming and determinism as :mod:`medseg.train`: an atomic checkpoint (both networks, both
optimisers, step, history, the :mod:`medseg.fingerprint`) every ``checkpoint_every`` steps;
batches are pure functions of ``(seed, step)`` and the random centres, rotations and exploration
noise of step ``s`` come from a generator seeded with ``(seed, s)``, so an interrupted and
resumed run on CPU ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medseg import tracking
from medseg.data import Prefetcher, TileSet, make_batch
from medseg.edpcnn_inference import object_channel, object_mask, object_name, predict_volume_edpcnn
from medseg.evaluate.metrics import dice
from medseg.io import write_json
from medseg.models import build_model, with_io_channels
from medseg.models.edpcnn import EDPCNN, EDPCNNModelConfig, make_optimizers, train_step
from medseg.tasks.definition import Task
from medseg.train import TrainConfig, _save, _write_history, plot_curves, resumable_checkpoint, seeded_device
from medseg.volume_inference import InferenceConfig

log = logging.getLogger(__name__)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of step ``step``'s centres, rotations and noise (a function of both)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0] >> 1))


def validate_edpcnn(model: EDPCNN, cases: Sequence[tuple[np.ndarray, np.ndarray]], context: int,
                    icfg: InferenceConfig, task: Task) -> dict[str, float]:
    """Mean Dice of the object over whole validation volumes ``(image (C, z, y, x), target (T, z, y, x))``."""
    scores = []
    for image, target in cases:
        probs = predict_volume_edpcnn([model], image, context, icfg, task.activation)
        k = model.object_channel
        pred = probs[k] > (icfg.threshold if task.activation == "sigmoid" else 0.5)
        scores.append(dice(object_mask(np.swapaxes(target, 0, 1), task.target_kind, k), pred))
    model.train()
    d = float(np.mean(scores))
    return {f"dice_{object_name(task)}": d, "dice_mean": d}


def train_edpcnn(train_tiles: tuple[Sequence[str], Sequence[str]], val_tiles: tuple[Sequence[str], Sequence[str]],
                 out_dir: str | Path, mcfg: EDPCNNModelConfig, cfg: TrainConfig, icfg: InferenceConfig,
                 task: Task, stop_after: int | None = None, fold: int = 0) -> dict:
    """Train one fold of an EDPCNN; arguments and outputs as :func:`medseg.train.train`.

    Returns:
        Summary: ``meta`` of ``model.pt`` (best validation Dice and its step, ...) and the
        share of time spent waiting for batches; ``{"stopped_at": step}`` after ``stop_after``.
    """
    if not isinstance(mcfg, EDPCNNModelConfig):
        raise ValueError(f"train_edpcnn needs an EDPCNNModelConfig (models.<key>.arch: edpcnn), got {type(mcfg).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = seeded_device(cfg)
    tiles = TileSet(*train_tiles, fold=fold)
    if tiles.n_image != len(task.modalities):
        raise ValueError(f"tiles hold {tiles.n_image} image channels but the task has {len(task.modalities)} "
                         f"modalities {list(task.modalities)}: re-run tile_case")
    if cfg.patch_size is not None and len(cfg.patch_size) != 2:
        raise ValueError(f"training.patch_size of an EDPCNN (2-D) must be (h, w), got {cfg.patch_size}")
    mcfg = dataclasses.replace(with_io_channels(mcfg, tiles.n_image * (2 * cfg.context + 1), task.n_outputs),
                               object_channel=object_channel(task))
    model = build_model(mcfg).to(device)
    opt_u, opt_sg = make_optimizers(model)
    name = object_name(task)
    log.info("EDPCNN on %s (%d CPU threads): object %s (output channel %d), %d rays x %d points, R = %.0f px",
             device, torch.get_num_threads(), name, mcfg.object_channel, mcfg.n_rays, mcfg.n_points, mcfg.radius_px)
    ckpt_path, history, best = out / "checkpoint.pt", [], {"dice_mean": -1.0, "step": -1}
    start = 0
    ck, fp = resumable_checkpoint(ckpt_path, device, cfg, mcfg, [*train_tiles[0], *train_tiles[1], *val_tiles[0],
                                                                 *val_tiles[1]],
                                  {"fold": fold, "task": task.to_dict(), "trainer": "edpcnn"})
    if ck:
        model.load_state_dict(ck["model"])
        opt_u.load_state_dict(ck["optimizer"])
        opt_sg.load_state_dict(ck["optimizer_sg"])
        start, history, best = ck["step"], ck["history"], ck["best"]
        log.info("resuming from %s at step %d", ckpt_path, start)
    else:
        (out / "best_weights.pt").unlink(missing_ok=True)  # of another run: never the result of this one
    val_cases = []
    if val_tiles[0]:
        v = TileSet(*val_tiles, fold=fold)
        val_cases = [(np.asarray(v.image(i), np.float32), np.asarray(v.target(i))) for i in range(len(v.arrays))]

    def make(s: int) -> tuple[np.ndarray, np.ndarray]:
        xb, yb = make_batch(tiles, s, cfg.seed, cfg.batch_size, cfg.context, cfg.fg_prob, cfg.patch_size, cfg.augment)
        return xb, object_mask(yb, task.target_kind, mcfg.object_channel)

    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    model.train()
    wait = compute = 0.0
    t_last = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start, desc="train edpcnn", unit="step", mininterval=5)
    for step, (xb, mb) in Prefetcher(make, start, end):
        t0 = time.perf_counter()
        wait += t0 - t_last
        losses = train_step(model, torch.from_numpy(xb).to(device), torch.from_numpy(mb).to(device), opt_u, opt_sg,
                            step_generator(cfg.seed, step))
        if not math.isfinite(losses["loss"]):
            raise FloatingPointError(f"EDPCNN training loss is {losses['loss']} at step {step}; lower models.<key>.lr")
        done = step + 1
        row = {"step": done, **losses, "lr": opt_u.param_groups[0]["lr"]}
        if val_cases and (done % cfg.val_every == 0 or done == cfg.steps):
            row.update(validate_edpcnn(model, val_cases, cfg.context, icfg, task))
            if row["dice_mean"] > best["dice_mean"]:
                best = {"dice_mean": row["dice_mean"], "step": done}
                _save({"model": model.state_dict()}, out / "best_weights.pt")
            log.info("step %d: loss %.4f, val Dice %s %.3f", done, row["loss"], name, row["dice_mean"])
        history.append(row)
        tracking.log_metrics({k: v for k, v in row.items() if k != "step" and math.isfinite(v)}, step=done)
        if done % cfg.checkpoint_every == 0 or done == end:
            _save({"model": model.state_dict(), "optimizer": opt_u.state_dict(), "optimizer_sg": opt_sg.state_dict(),
                   "step": done, "history": history, "best": best, "fingerprint": fp}, ckpt_path)
        compute += time.perf_counter() - t0
        t_last = time.perf_counter()
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
    bar.close()
    if end < cfg.steps:
        return {"stopped_at": end}
    weights = torch.load(out / "best_weights.pt", weights_only=True)["model"] if (out / "best_weights.pt").exists() else model.state_dict()
    meta = {"model_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(mcfg).items()},
            "context": cfg.context, "modalities": list(task.modalities), "task": task.to_dict(),
            "best": best, "steps": cfg.steps, "seed": cfg.seed, "trainer": "edpcnn", "object": name}
    _save({"state_dict": weights, "meta": meta}, out / "model.pt")
    _write_history(history, out / "metrics.csv")
    plot_curves(history, out / "curves.png", (name,))
    summary = {**meta, "data_wait_fraction": wait / max(wait + compute, 1e-9)}
    write_json(summary, out / "summary.json")
    return summary
