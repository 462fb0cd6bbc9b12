"""Training loop: steps-based, resumable from atomic checkpoints, deterministic on CPU.

Resuming: a checkpoint (model, optimiser, scheduler, AMP scaler, step, history, and the
:mod:`medseg.tracking.fingerprint` of the configs and tiles it was trained from) is written atomically
every ``checkpoint_every`` steps; a restarted job continues from it if the fingerprint is
unchanged, and starts fresh (logged) if the training config, the model or the inputs changed. Batches are pure
functions of ``(seed, step)`` (:mod:`medseg.training.batches`), so an interrupted-and-resumed run on CPU
ends with the same weights as an uninterrupted one.

2-D/2.5-D models (``spatial_dims == 2``) train on slices with context channels
(:func:`medseg.training.batches.make_batch`); 3-D models (``unet3d``, ``tiramisu3d``, ``factorized_unet``)
on 3-D patches sampled from the same tile arrays (:meth:`medseg.training.batches3d.VolumeSet3D.from_tiles`,
:func:`medseg.training.batches3d.make_batch3d`: nnU-Net's one-third foreground oversampling and 3-D
augmentation), context 0. Validation runs the stitched inference of :func:`medseg.inference.volume.predict_volume`
either way.

Per-model settings: ``models.<key>`` may hold ``training:`` and ``inference:`` mappings that
override the global sections for that model (:func:`split_model_key`); e.g. a 3-D net's batch
size and learning rate. ``training.loss`` unset (``null``) means the model's ``default_loss``
(the paper's: ``jaccard`` for unet3d, ``multiclass_iou`` for factorized_unet, ``dice_bce``
otherwise); precedence: ``models.<key>.training.loss`` > ``training.loss`` > the model's default.

Multi-GPU: under ``torchrun`` (:func:`medseg.training.ddp.detect_env`) every rank builds its contiguous
share of each global batch (:func:`medseg.training.ddp.shard`), the model is wrapped in
DistributedDataParallel, rank 0 alone validates and writes files; one process behaves exactly
as without torchrun. A DDP step equals the one-process step on the same global batch when the
loss is a mean over samples (``ce``; the Dice/Jaccard/IoU losses pool over the batch, so each
rank's is over its shard) and the network normalises per sample (instance norm; BatchNorm is
synchronised on CUDA).
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
from medseg.evaluate.metrics import dice
from medseg.inference.config import InferenceConfig
from medseg.inference.volume import predict_volume
from medseg.io import write_json
from medseg.models import build_model, load_hook
from medseg.models.checkpoint import plain, save_atomic
from medseg.plan.runs import ModelRun
from medseg.tasks.definition import Task
from medseg.training import ddp
from medseg.training.batches import TileSet, as_loss_target, batch_stream, make_batch
from medseg.training.batches3d import PoolPrefetcher, VolumeSet3D, make_batch3d
from medseg.training.checkpoint import resumable_checkpoint, seeded_device
from medseg.training.config import FoldJob, TrainConfig
from medseg.training.curves import kept_score, plot_curves, write_history
from medseg.training.losses import get_loss

log = logging.getLogger(__name__)



def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return (1 - t) ** 0.9 if cfg.schedule == "poly" else 0.5 * (1 + math.cos(math.pi * t))


def structures(task: Task) -> tuple[str, ...]:
    """What validation scores: the regions (sigmoid tasks) or the foreground labels (softmax tasks)."""
    return tuple(task.regions) if task.regions else tuple(task.labels)


def validate(model: torch.nn.Module, cases: Sequence[tuple[np.ndarray, np.ndarray]], context: int,
             icfg: InferenceConfig, task: Task) -> dict[str, float]:
    """Mean Dice per region (or label) on whole validation volumes, stitched like at inference.

    ``cases``: ``(image (C, z, y, x), target (T, z, y, x))`` as tiled (:func:`medseg.preprocess.tiling.tile_case`).
    """
    names = structures(task)
    scores = []
    for image, target in cases:
        probs = predict_volume([model], image, context, icfg, task.activation)
        if task.regions:
            scores.append([dice(target[k] > 0, probs[k] > icfg.threshold) for k in range(len(names))])
        else:
            pred, ref = probs.argmax(0), np.rint(target[0])
            scores.append([dice(ref == i, pred == i) for i in range(1, len(names) + 1)])
    model.train()
    s = np.mean(scores, axis=0)
    return {**{f"dice_{n}": float(v) for n, v in zip(names, s)}, "dice_mean": float(s.mean())}



def train(job: FoldJob, run: ModelRun, stop_after: int | None = None) -> dict:
    """Train one fold with the trainer hook of the run's architecture (default :func:`fit`; EDPCNN:
    :func:`medseg.training.edpcnn.train_edpcnn`); every trainer reads and writes the same files.

    Args:
        job: the fold's tiles, folder and task.
        run: the model key's run from the plan (network, training and inference settings).
        stop_after: stop (as if killed) after this many steps; for tests of resuming.
    """
    return load_hook(run.arch.trainer)(job, run, stop_after)


@dataclasses.dataclass
class Fold:
    """The state of one fold's training (:func:`fit`)."""

    job: FoldJob
    cfg: TrainConfig
    icfg: InferenceConfig
    env: ddp.DistEnv
    device: torch.device
    out: Path
    parts: dict = dataclasses.field(default_factory=dict)  # model (maybe DDP-wrapped), opt, sched, scaler, loss
    history: list = dataclasses.field(default_factory=list)
    best: dict = dataclasses.field(default_factory=lambda: {"dice_mean": -1.0, "step": -1})
    start: int = 0
    wait: float = 0.0
    compute: float = 0.0
    channels_last: bool = False  # the 2-D network and its batches in NHWC layout (TrainConfig.channels_last)


def start_fold(job: FoldJob, run: ModelRun) -> Fold:
    out, env = Path(job.out_dir), ddp.detect_env()
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    device = seeded_device(run.training)
    if env.distributed:
        device = ddp.init_distributed(env, backend="gloo" if device.type == "cpu" else None)
    log.info("training on %s (%d CPU threads%s)", device, torch.get_num_threads(),
             f", rank {env.rank}/{env.world_size}" if env.distributed else "")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return Fold(job, run.training, run.inference, env, device, out)


def _batch_maker(f: Fold, run: ModelRun):
    """(make(step) -> (x, y), image channels, 3-D?) for 2-D slices or 3-D patches."""
    cfg, task, env = f.cfg, f.job.task, f.env
    mine = ddp.shard(cfg.batch_size, env)
    if run.spatial_dims == 3:
        vols = VolumeSet3D.from_tiles(f.job.tiles("train")[0], f.job.fold, n_classes=task.n_outputs)
        pcfg = dataclasses.replace(cfg.patch3d, patch_size=cfg.patch_size)
        log.info("3-D patches %s, %d per step (%d on this rank)", pcfg.patch_size, cfg.batch_size, len(mine))
        make = lambda s: make_batch3d(vols, s, cfg.seed, cfg.batch_size, pcfg, cfg.augment3d, samples=mine)  # noqa: E731
        return make, vols.n_channels, True
    tiles = TileSet(*f.job.tiles("train"), fold=f.job.fold)

    def make(s: int) -> tuple[np.ndarray, np.ndarray]:
        xb, yb = make_batch(tiles, s, cfg.seed, cfg.batch_size, cfg.context, cfg.fg_prob, cfg.patch_size, cfg.augment)
        if env.distributed:  # the global batch is one draw: every rank builds it and keeps its share
            xb, yb = xb[mine.start:mine.stop], yb[mine.start:mine.stop]
        return xb, as_loss_target(yb, task.target_kind)
    return make, tiles.n_image, False


def check_channels(n_image: int, task: Task) -> None:
    if n_image != len(task.modalities):
        raise ValueError(f"tiles hold {n_image} image channels but the task has {len(task.modalities)} "
                         f"modalities {list(task.modalities)}: re-run tile_case")


def validation_cases(job: FoldJob) -> list[tuple[np.ndarray, np.ndarray]]:
    """Whole validation volumes ``(image (C, z, y, x), target (T, z, y, x))`` of the fold."""
    if not job.val_tiles:
        return []
    v = TileSet(*job.tiles("val"), fold=job.fold)
    return [(np.asarray(v.image(i), np.float32), np.asarray(v.target(i))) for i in range(len(v.arrays))]


def _step(f: Fold, x: torch.Tensor, y: torch.Tensor, step: int) -> float:
    """One optimiser step of ``f.parts``; returns the loss."""
    cfg, device = f.cfg, f.device
    model, opt, sched, scaler, loss_fn = (f.parts[k] for k in ("model", "opt", "sched", "scaler", "loss"))
    with torch.autocast(device.type, enabled=cfg.amp and device.type == "cuda"):
        outs = model(x)
        outs = outs if isinstance(outs, list) else [outs]
        loss = loss_fn(outs[0].float(), y)
        for w, aux in zip(cfg.deep_supervision_weights, outs[1:]):
            loss = loss + w * loss_fn(aux.float(), y)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss.item()} at step {step}; lower training.lr")
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(opt)
    scaler.update()
    sched.step()
    return float(loss.item())


def record(f: Fold, row: dict, net, val_cases, validate_fn, done: int) -> None:
    """Validate when due (``val_every`` and the last step), keep the weights of the best smoothed
    validation Dice (:func:`medseg.training.curves.kept_score`), log the row."""
    if val_cases and (done % f.cfg.val_every == 0 or done == f.cfg.steps):
        row.update(validate_fn(net, val_cases))
        score = kept_score([*f.history, row])
        if score > f.best.get("score", f.best["dice_mean"]):
            f.best = {"dice_mean": row["dice_mean"], "score": score, "step": done}
            save_atomic({"model": net.state_dict()}, f.out / "best_weights.pt")
        log.info("step %d: loss %.4f, val Dice %s", done, row["loss"],
                 " ".join(f"{k[5:]} {v:.3f}" for k, v in row.items() if k.startswith("dice_") and k != "dice_mean"))
    f.history.append(row)
    if f.env.is_main:
        # chart sections of the MLflow UI: val/dice_WT ... (validation), train/loss, train/lr ...
        tracking.log_metrics({f"{'val' if k.startswith('dice_') else 'train'}/{k}": v for k, v in row.items()
                              if k != "step" and math.isfinite(v)}, step=done)


def finish(f: Fold, net, meta: dict, names: Sequence[str]) -> dict:
    """Write ``model.pt`` (the best validation weights, with ``meta``), ``metrics.csv``, ``curves.png``
    and ``summary.json``; return the summary."""
    best = f.out / "best_weights.pt"
    weights = torch.load(best, weights_only=True)["model"] if best.exists() else net.state_dict()
    save_atomic({"state_dict": weights, "meta": meta}, f.out / "model.pt")
    write_history(f.history, f.out / "metrics.csv")
    plot_curves(f.history, f.out / "curves.png", names)
    steps = max(len(f.history) - (f.history[0]["step"] - 1 if f.history else 0), 1)
    summary = {**meta, "data_wait_fraction": f.wait / max(f.wait + f.compute, 1e-9),
               "steps_per_s": steps / max(f.wait + f.compute, 1e-9)}  # the loop's own steps, this run
    write_json(summary, f.out / "summary.json")
    return summary


def model_meta(f: Fold, mcfg, **extra) -> dict:
    """What ``model.pt`` says of itself: the network config, context, task, best validation step ..."""
    task = f.job.task
    return {"model_config": plain(dataclasses.asdict(mcfg)), "context": f.cfg.context,
            "modalities": list(task.modalities), "task": task.to_dict(), **extra}


def resume(f: Fold, run: ModelRun, mcfg, states: dict, extra: dict) -> dict:
    """Load a checkpoint of this same run into ``states`` (name -> object with load_state_dict);
    return the fingerprint checkpoints of this run record."""
    job = f.job
    ck, fp = resumable_checkpoint(f.out / "checkpoint.pt", f.device, f.cfg, mcfg,
                                  [*job.train_tiles, *job.tiles("train")[1], *job.val_tiles, *job.tiles("val")[1]],
                                  {"fold": job.fold, "task": job.task.to_dict(), **extra})
    if ck:
        for name, obj in states.items():
            obj.load_state_dict(ck[name])
        f.start, f.history, f.best = ck["step"], ck["history"], ck["best"]
        log.info("resuming from %s at step %d", f.out / "checkpoint.pt", f.start)
    elif f.env.is_main:
        (f.out / "best_weights.pt").unlink(missing_ok=True)  # of another run: never the result of this one
    return fp


def _loop(f: Fold, batches, net, val_cases, fp: dict, end: int) -> None:
    """Steps ``f.start .. end - 1``: optimise, validate when due, checkpoint (rank 0)."""
    cfg, task = f.cfg, f.job.task
    states = {"model": net, "optimizer": f.parts["opt"], "scheduler": f.parts["sched"], "scaler": f.parts["scaler"]}
    t_last = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=f.start, desc="train", unit="step", mininterval=5, disable=not f.env.is_main)
    for step, (xb, yb) in batches:
        t0 = time.perf_counter()
        f.wait += t0 - t_last
        x = torch.from_numpy(xb).to(f.device)
        loss = _step(f, x.contiguous(memory_format=torch.channels_last) if f.channels_last else x,
                     torch.from_numpy(yb).to(f.device), step)
        done = step + 1
        row = {"step": done, "loss": ddp.all_reduce_mean({"loss": loss}, f.env)["loss"],
               "lr": f.parts["opt"].param_groups[0]["lr"]}
        record(f, row, net, val_cases, lambda m, v: validate(m, v, cfg.context, f.icfg, task), done)
        if f.env.is_main and (done % cfg.checkpoint_every == 0 or done == end):
            save_atomic({**{k: o.state_dict() for k, o in states.items()}, "step": done, "history": f.history,
                         "best": f.best, "fingerprint": fp}, f.out / "checkpoint.pt")
        f.compute += time.perf_counter() - t0
        t_last = time.perf_counter()
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)  # keep mininterval: logs stay short
    bar.close()


def fit(job: FoldJob, run: ModelRun, stop_after: int | None = None) -> dict:
    """The common loop (every architecture but EDPCNN): see the module doc. Returns the summary
    (rank 0; other DDP ranks ``{"rank": r}``; ``{"stopped_at": step}`` after ``stop_after``)."""
    f = start_fold(job, run)
    cfg, task = f.cfg, job.task
    make, n_image, three_d = _batch_maker(f, run)
    f.channels_last = cfg.channels_last and not three_d
    check_channels(n_image, task)
    mcfg = run.network_config(n_image, task.n_outputs)
    net = build_model(mcfg).to(f.device)
    if f.channels_last:
        net = net.to(memory_format=torch.channels_last)
    log.info("model %s (%d parameters), loss %s%s", mcfg.arch, sum(p.numel() for p in net.parameters()), cfg.loss,
             ", channels-last layout" if f.channels_last else "")
    # the fused kernel: one pass over all parameters (CPU: 5 ms a step for the demo's 12.5 M, against 20-40 ms
    # for the default per-tensor loop; python benchmarks/bench_train_step.py)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=f.device.type in ("cpu", "cuda"))
    f.parts = {"opt": opt, "sched": torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg)),
               "scaler": torch.amp.GradScaler(f.device.type, enabled=cfg.amp and f.device.type == "cuda"),
               "loss": get_loss(cfg.loss)}
    fp = resume(f, run, mcfg, {"model": net, "optimizer": opt, "scheduler": f.parts["sched"],
                               "scaler": f.parts["scaler"]}, {})
    f.parts["model"] = ddp.wrap_model(net, f.env, f.device, sync_bn=f.device.type == "cuda")
    val_cases = validation_cases(job) if f.env.is_main else []
    end = cfg.steps if stop_after is None else min(cfg.steps, f.start + stop_after)
    f.parts["model"].train()
    batches = (PoolPrefetcher(make, f.start, end, workers=cfg.data_workers, depth=2 * cfg.data_workers)
               if three_d else batch_stream(make, f.start, end, f.device.type))
    _loop(f, batches, net, val_cases, fp, end)
    if end < cfg.steps:
        return {"stopped_at": end}
    if not f.env.is_main:
        return {"rank": f.env.rank}
    meta = model_meta(f, mcfg, loss=cfg.loss, best=f.best, steps=cfg.steps, seed=cfg.seed,
                      world_size=f.env.world_size)
    return finish(f, net, meta, structures(task))
