"""Training loop of the model key ``edpcnn`` (Nguyen & Ray's Algorithm 2) on the workflow's tiles.

:func:`medseg.training.loop.train` hands EDPCNN configs to :func:`train_edpcnn`, which takes the same
inputs (tiles of :class:`medseg.training.batches.TileSet`, the task, ``training`` and ``inference``
configs) and writes the same outputs (``model.pt`` with ``meta`` incl. the task,
``checkpoint.pt``, ``best_weights.pt``, ``metrics.csv``, ``curves.png``, ``summary.json``), so
the workflow's ``train_model`` and ``predict_case`` rules run it unchanged.

Target: ONE star-shaped binary object per 2-D slice, ``models.<key>.object`` resolved once against
the task (:func:`medseg.inference.edpcnn.resolve_object`): a label (ACDC: ``LV``, the LV cavity, the
paper's object) or region; by default the task's largest region (the one the others nest in;
BraTS: WT, the whole tumour) for region tasks, the union of all labels for label tasks. The
trainer records its output channel in the model config (``object_channel``). Slices are drawn by :func:`medseg.training.batches.make_batch` as for the U-Net
(``training.fg_prob`` of them hold the object; the others have an empty mask and train only the
U-Net's centre loss, see :func:`medseg.training.edpcnn_step.train_step`), with ``training.context``,
``patch_size`` and ``augment``.

Optimisers: the paper's two Adams with the model's ``lr`` / ``sg_lr`` (constant, as in Sec. 3.3);
``training.lr``, ``weight_decay``, ``schedule``, ``warmup``, ``loss``, ``grad_clip`` and
``amp`` are not used. Validation (every ``val_every`` steps and at the end) is the Dice of the
object on whole validation volumes predicted as at inference
(:func:`medseg.inference.edpcnn.predict_volume_edpcnn`, centres from the U-Net's output); the
best validation weights are the result, as for the U-Net.

Resuming and determinism as :mod:`medseg.training.loop`: an atomic checkpoint (both networks, both
optimisers, step, history, the :mod:`medseg.tracking.fingerprint`) every ``checkpoint_every`` steps;
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

import numpy as np
import torch
from tqdm import tqdm

from medseg.evaluate.metrics import dice
from medseg.inference.config import InferenceConfig
from medseg.inference.edpcnn import StarObject, predict_volume_edpcnn, resolve_object
from medseg.models import build_model
from medseg.models.checkpoint import save_atomic
from medseg.models.edpcnn import EDPCNN, EDPCNNModelConfig
from medseg.plan.runs import ModelRun
from medseg.tasks.definition import Task
from medseg.training.batches import TileSet, batch_stream, make_batch
from medseg.training.config import FoldJob
from medseg.training.edpcnn_step import make_optimizers, train_step
from medseg.training.loop import check_channels, finish, model_meta, record, resume, start_fold, validation_cases

log = logging.getLogger(__name__)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of step ``step``'s centres, rotations and noise (a function of both)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0] >> 1))


def validate_edpcnn(model: EDPCNN, cases: Sequence[tuple[np.ndarray, np.ndarray]], context: int,
                    icfg: InferenceConfig, task: Task, obj: StarObject | None = None) -> dict[str, float]:
    """Mean Dice of the object ``obj`` (default: the task's default object) over whole validation
    volumes ``(image (C, z, y, x), target (T, z, y, x))``."""
    obj = obj or resolve_object(task)
    scores = []
    for image, target in cases:
        probs = predict_volume_edpcnn([model], image, context, icfg, task.activation)
        pred = probs[obj.channel] > (icfg.threshold if task.activation == "sigmoid" else 0.5)
        scores.append(dice(obj.mask(np.swapaxes(target, 0, 1)), pred))
    model.train()
    d = float(np.mean(scores))
    return {f"dice_{obj.name}": d, "dice_mean": d}


def train_edpcnn(job: FoldJob, run: ModelRun, stop_after: int | None = None) -> dict:
    """The trainer hook of ``arch: edpcnn``: one fold of Algorithm 2; arguments and outputs as
    :func:`medseg.training.loop.train` (``model.pt`` says ``trainer: edpcnn`` and the object).

    Returns:
        Summary: ``meta`` of ``model.pt`` (best validation Dice and its step, ...) and the
        share of time spent waiting for batches; ``{"stopped_at": step}`` after ``stop_after``.
    """
    f = start_fold(job, run)
    cfg, task = f.cfg, job.task
    tiles = TileSet(*job.tiles("train"), fold=job.fold)
    check_channels(tiles.n_image, task)
    mcfg = run.network_config(tiles.n_image, task.n_outputs)
    if not isinstance(mcfg, EDPCNNModelConfig):
        raise ValueError(f"train_edpcnn needs an EDPCNNModelConfig (models.<key>.arch: edpcnn), got {type(mcfg).__name__}")
    obj = resolve_object(task, mcfg.object, f"models.{run.key}.object")
    mcfg = dataclasses.replace(mcfg, object_channel=obj.channel)
    model = build_model(mcfg).to(f.device)
    opt_u, opt_sg = make_optimizers(model)
    name = obj.name
    log.info("EDPCNN on %s: object %s (output channel %d), %d rays x %d points, R = %.0f px",
             f.device, name, mcfg.object_channel, mcfg.n_rays, mcfg.n_points, mcfg.radius_px)
    states = {"model": model, "optimizer": opt_u, "optimizer_sg": opt_sg}
    fp = resume(f, run, mcfg, states, {"trainer": "edpcnn"})
    val_cases = validation_cases(job)

    def make(s: int) -> tuple[np.ndarray, np.ndarray]:
        xb, yb = make_batch(tiles, s, cfg.seed, cfg.batch_size, cfg.context, cfg.fg_prob, cfg.patch_size, cfg.augment)
        return xb, obj.mask(yb)

    end = cfg.steps if stop_after is None else min(cfg.steps, f.start + stop_after)
    model.train()
    t_last = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=f.start, desc="train edpcnn", unit="step", mininterval=5)
    for step, (xb, mb) in batch_stream(make, f.start, end, f.device.type):
        t0 = time.perf_counter()
        f.wait += t0 - t_last
        losses = train_step(model, torch.from_numpy(xb).to(f.device), torch.from_numpy(mb).to(f.device), opt_u, opt_sg,
                            step_generator(cfg.seed, step))
        if not math.isfinite(losses["loss"]):
            raise FloatingPointError(f"EDPCNN training loss is {losses['loss']} at step {step}; lower models.<key>.lr")
        done = step + 1
        record(f, {"step": done, **losses, "lr": opt_u.param_groups[0]["lr"]}, model, val_cases,
               lambda m, v: validate_edpcnn(m, v, cfg.context, f.icfg, task, obj), done)
        if done % cfg.checkpoint_every == 0 or done == end:
            save_atomic({**{k: o.state_dict() for k, o in states.items()}, "step": done, "history": f.history,
                         "best": f.best, "fingerprint": fp}, f.out / "checkpoint.pt")
        f.compute += time.perf_counter() - t0
        t_last = time.perf_counter()
        bar.update(1)
        bar.set_postfix(loss=f"{f.history[-1]['loss']:.3f}", refresh=False)
    bar.close()
    if end < cfg.steps:
        return {"stopped_at": end}
    meta = model_meta(f, mcfg, best=f.best, steps=cfg.steps, seed=cfg.seed, trainer="edpcnn", object=name)
    return finish(f, model, meta, (name,))
