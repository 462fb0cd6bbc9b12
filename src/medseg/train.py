"""Training loop: steps-based, resumable from atomic checkpoints, deterministic on CPU.

Resuming: a checkpoint (model, optimiser, scheduler, AMP scaler, step, history, and the
:mod:`medseg.fingerprint` of the configs and tiles it was trained from) is written atomically
every ``checkpoint_every`` steps; a restarted job continues from it if the fingerprint is
unchanged, and starts fresh (logged) if the training config, the model or the inputs changed. Batches are pure
functions of ``(seed, step)`` (:mod:`medseg.data`), so an interrupted-and-resumed run on CPU
ends with the same weights as an uninterrupted one.

2-D/2.5-D models (``spatial_dims == 2``) train on slices with context channels
(:func:`medseg.data.make_batch`); 3-D models (``unet3d``, ``tiramisu3d``, ``factorized_unet``)
on 3-D patches sampled from the same tile arrays (:meth:`medseg.data3d.VolumeSet3D.from_tiles`,
:func:`medseg.data3d.make_batch3d`: nnU-Net's one-third foreground oversampling and 3-D
augmentation), context 0. Validation runs the stitched inference of :func:`medseg.volume_inference.predict_volume`
either way.

Per-model settings: ``models.<key>`` may hold ``training:`` and ``inference:`` mappings that
override the global sections for that model (:func:`split_model_key`); e.g. a 3-D net's batch
size and learning rate. ``training.loss`` unset (``null``) means the model's ``default_loss``
(the paper's: ``jaccard`` for unet3d, ``multiclass_iou`` for factorized_unet, ``dice_bce``
otherwise); precedence: ``models.<key>.training.loss`` > ``training.loss`` > the model's default.

Multi-GPU: under ``torchrun`` (:func:`medseg.ddp.detect_env`) every rank builds its contiguous
share of each global batch (:func:`medseg.ddp.shard`), the model is wrapped in
DistributedDataParallel, rank 0 alone validates and writes files; one process behaves exactly
as without torchrun. A DDP step equals the one-process step on the same global batch when the
loss is a mean over samples (``ce``; the Dice/Jaccard/IoU losses pool over the batch, so each
rank's is over its shard) and the network normalises per sample (instance norm; BatchNorm is
synchronised on CUDA).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medseg import ddp, tracking
from medseg.augment3d import Augment3DConfig
from medseg.config import from_mapping
from medseg.data import AugmentConfig, Prefetcher, TileSet, as_loss_target, make_batch
from medseg.data3d import Patch3DConfig, PoolPrefetcher, VolumeSet3D, make_batch3d
from medseg.evaluate.metrics import dice
from medseg.fingerprint import differences, fingerprint
from medseg.io import atomic_path, write_json
from medseg.losses import get_loss
from medseg.models import AnyModelConfig, build_model, model_config_from_mapping, with_io_channels
from medseg.tasks.definition import Task
from medseg.volume_inference import InferenceConfig, predict_volume, resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Config key ``training``.

    Attributes:
        steps: optimiser steps.
        batch_size: slices (2-D) or patches (3-D) per step: the global batch under DDP.
        lr, weight_decay: AdamW settings.
        schedule: ``poly`` (nnU-Net, exponent 0.9) or ``cosine``, after ``warmup`` linear steps.
        loss: loss registry key (:mod:`medseg.losses`); ``None`` = the model's ``default_loss``.
        context: 2.5-D context slices on each side (0 = 2-D); 3-D models always use 0.
        patch_size: 2 values: in-plane crop ``(h, w)`` of 2-D models (``None`` = whole slice);
            3 values: the 3-D patch ``(d, h, w)`` of 3-D models (else the model's ``patch_size``).
        fg_prob: probability that a 2-D sample is drawn from a slice holding tumour.
        patch3d: 3-D sampling (``fg_fraction`` 1/3 as nnU-Net, ``jitter``); its ``patch_size`` stays null.
        augment3d: 3-D augmentation (:class:`medseg.augment3d.Augment3DConfig`).
        data_workers: threads building 3-D batches ahead (:class:`medseg.data3d.PoolPrefetcher`).
        grad_clip: max gradient norm (0 = off).
        checkpoint_every, val_every: in steps (validation also runs at the last step).
        seed: seeds weights init and every batch.
        device: ``auto``, ``cpu`` or ``cuda``; amp: mixed precision on CUDA.
        threads: CPU threads for torch.
        deep_supervision_weights: loss weights of the auxiliary outputs.
    """

    steps: int = 400
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: str = "poly"
    warmup: int = 20
    loss: str | None = None
    context: int = 1
    patch_size: tuple[int, ...] | None = None
    fg_prob: float = 0.6
    grad_clip: float = 12.0
    checkpoint_every: int = 50
    val_every: int = 200
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    threads: int = 0
    deep_supervision_weights: tuple[float, ...] = (0.5, 0.25)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    patch3d: Patch3DConfig = field(default_factory=Patch3DConfig)
    augment3d: Augment3DConfig = field(default_factory=Augment3DConfig)
    data_workers: int = 2

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"training.steps and training.batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.schedule not in ("poly", "cosine"):
            raise ValueError(f"training.schedule must be 'poly' or 'cosine', got {self.schedule!r}")
        if not 0 <= self.fg_prob <= 1:
            raise ValueError(f"training.fg_prob must be in [0, 1], got {self.fg_prob}")
        if self.loss is not None:
            get_loss(self.loss)
        if self.patch_size is not None and (len(self.patch_size) not in (2, 3) or any(int(p) < 1 for p in self.patch_size)):
            raise ValueError(f"training.patch_size must be 2 (h, w) or 3 (d, h, w) positive sizes, got {self.patch_size}")
        if self.patch3d.patch_size is not None:
            raise ValueError("training.patch3d.patch_size must stay null: set training.patch_size (3 values) "
                             f"or models.<key>.patch_size, got {self.patch3d.patch_size}")
        if self.data_workers < 1:
            raise ValueError(f"training.data_workers must be >= 1, got {self.data_workers}")


MODEL_SECTIONS = ("training", "inference")


def split_model_key(mapping: dict | None, path: str = "models.") -> tuple[AnyModelConfig, dict, dict]:
    """``models.<key>`` -> (network config, its ``training`` overrides, its ``inference`` overrides).

    The overrides update the global ``training`` / ``inference`` sections for this model
    (:func:`merge_sections`); everything else is the architecture's config
    (:func:`medseg.models.model_config_from_mapping`, ``arch`` defaulting to ``timm_unet``).
    """
    mapping = dict(mapping or {})
    extra = {k: dict(mapping.pop(k) or {}) for k in MODEL_SECTIONS if k in mapping}
    return model_config_from_mapping(mapping, path), extra.get("training", {}), extra.get("inference", {})


def merge_sections(base: dict | None, override: dict | None) -> dict:
    """``base`` updated with ``override``, one level deep for nested mappings (``augment3d`` ...)."""
    out = dict(base or {})
    for k, v in (override or {}).items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def configs_for_model(model: dict | None, training: dict | None, inference: dict | None, key: str = "model",
                      threads: int = 0) -> tuple[AnyModelConfig, TrainConfig, InferenceConfig]:
    """The typed configs one model key trains and predicts with (global sections + its overrides)."""
    mcfg, t_over, i_over = split_model_key(model, f"models.{key}.")
    t = merge_sections(training, t_over)
    if threads and "threads" not in t:
        t["threads"] = threads
    return (mcfg, from_mapping(TrainConfig, t, f"models.{key}.training."),
            from_mapping(InferenceConfig, merge_sections(inference, i_over), f"models.{key}.inference."))


def patch_size_3d(cfg: TrainConfig, mcfg: AnyModelConfig) -> tuple[int, int, int]:
    """The 3-D training patch: ``training.patch_size`` when it has 3 values, else the model's."""
    if cfg.patch_size is not None and len(cfg.patch_size) == 3:
        return tuple(int(p) for p in cfg.patch_size)
    if mcfg.patch_size is None or len(mcfg.patch_size) != 3:
        raise ValueError(f"models.patch_size of a 3-D model must be 3 sizes, got {mcfg.patch_size}")
    return tuple(int(p) for p in mcfg.patch_size)


def _plain(value):
    """Tuples -> lists, recursively (a config as saved in ``model.pt``)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _tuples(value):
    """Lists -> tuples, recursively (back to a config's field types)."""
    if isinstance(value, (tuple, list)):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return (1 - t) ** 0.9 if cfg.schedule == "poly" else 0.5 * (1 + math.cos(math.pi * t))


def _save(obj: dict, path: Path) -> None:
    """Atomic ``torch.save``; through a buffer because torch names the archive after the file,
    and a random temporary name would make identical weights give different bytes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path, suffix=".pt") as tmp:
        tmp.write_bytes(buffer.getvalue())


def structures(task: Task) -> tuple[str, ...]:
    """What validation scores: the regions (sigmoid tasks) or the foreground labels (softmax tasks)."""
    return tuple(task.regions) if task.regions else tuple(task.labels)


def validate(model: torch.nn.Module, cases: Sequence[tuple[np.ndarray, np.ndarray]], context: int,
             icfg: InferenceConfig, task: Task) -> dict[str, float]:
    """Mean Dice per region (or label) on whole validation volumes, stitched like at inference.

    ``cases``: ``(image (C, z, y, x), target (T, z, y, x))`` as tiled (:func:`medseg.tiling.tile_case`).
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



def seeded_device(cfg: TrainConfig) -> torch.device:
    """Set the training's torch threads, seed and deterministic algorithms; return its device."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return resolve_device(cfg.device)


def resumable_checkpoint(path: Path, device, training, model_cfg, inputs: Sequence, extra: dict) -> tuple[dict, dict]:
    """``(checkpoint, fingerprint)``: the checkpoint at ``path`` if it was written by a run with this
    fingerprint (:mod:`medseg.fingerprint`: configs and input files), else ``{}`` (a fresh start, logged
    with what changed), and the fingerprint a checkpoint of this run records."""
    ck = torch.load(path, map_location=device, weights_only=True) if path.exists() else {}
    fp = fingerprint(training, model_cfg, inputs, extra, previous=ck.get("fingerprint"))
    if ck and (changed := differences(ck.get("fingerprint"), fp)):
        log.warning("checkpoint %s was trained with a different %s: starting fresh", path, ", ".join(changed))
        ck = {}
    return ck, fp

def train(train_tiles: tuple[Sequence[str], Sequence[str]], val_tiles: tuple[Sequence[str], Sequence[str]],
          out_dir: str | Path, mcfg: AnyModelConfig, cfg: TrainConfig, icfg: InferenceConfig,
          task: Task, stop_after: int | None = None, fold: int = 0) -> dict:
    """Train one fold; write ``model.pt``, ``checkpoint.pt``, ``metrics.csv``, ``curves.png``.

    Args:
        train_tiles, val_tiles: ``(npy paths, json paths)`` of tiled cases.
        out_dir: fold folder.
        mcfg: the network (any registry config; ``spatial_dims`` 3 trains on 3-D patches).
        task: the dataset's task: input modalities, output channels and their activation.
        fold: which of the tiles' per-fold normalisations to train on.
        stop_after: stop (as if killed) after this many steps; for tests of resuming.

    Returns:
        Summary with the best validation Dice and the step it was reached (rank 0; other DDP
        ranks return ``{"rank": r}``).
    """
    if mcfg.arch == "edpcnn":  # U-Net + star DP, synthetic gradients: its own loop (same inputs and outputs)
        from medseg.train_edpcnn import train_edpcnn

        return train_edpcnn(train_tiles, val_tiles, out_dir, mcfg, cfg, icfg, task, stop_after, fold)
    out = Path(out_dir)
    env = ddp.detect_env()
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    device = seeded_device(cfg)
    if env.distributed:
        device = ddp.init_distributed(env, backend="gloo" if device.type == "cpu" else None)
    log.info("training on %s (%d CPU threads%s)", device, torch.get_num_threads(),
             f", rank {env.rank}/{env.world_size}" if env.distributed else "")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    three_d = mcfg.spatial_dims == 3
    context = 0 if three_d else cfg.context
    if three_d:
        if cfg.context:
            log.info("3-D model %s: training.context %d ignored (whole volumes, no context slices)", mcfg.arch, cfg.context)
        vols = VolumeSet3D.from_tiles(train_tiles[0], fold, n_classes=task.n_outputs)
        n_image = vols.n_channels
    else:
        tiles = TileSet(*train_tiles, fold=fold)
        n_image = tiles.n_image
    if n_image != len(task.modalities):
        raise ValueError(f"tiles hold {n_image} image channels but the task has {len(task.modalities)} "
                         f"modalities {list(task.modalities)}: re-run tile_case")
    mcfg = with_io_channels(mcfg, n_image * (2 * context + 1), task.n_outputs)
    model = build_model(mcfg).to(device)
    loss_name = cfg.loss or getattr(model, "default_loss", "dice_bce")
    loss_fn = get_loss(loss_name)
    log.info("model %s (%d parameters), loss %s", mcfg.arch, sum(p.numel() for p in model.parameters()), loss_name)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    ckpt_path, history, best = out / "checkpoint.pt", [], {"dice_mean": -1.0, "step": -1}
    start = 0
    ck, fp = resumable_checkpoint(ckpt_path, device, cfg, mcfg, [*train_tiles[0], *train_tiles[1], *val_tiles[0],
                                                                 *val_tiles[1]], {"fold": fold, "task": task.to_dict()})
    if ck:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        start, history, best = ck["step"], ck["history"], ck["best"]
        log.info("resuming from %s at step %d", ckpt_path, start)
    elif env.is_main:
        (out / "best_weights.pt").unlink(missing_ok=True)  # of another run: never the result of this one
    net = model  # the bare network: validated and saved
    model = ddp.wrap_model(model, env, device, sync_bn=device.type == "cuda")
    val_cases = []
    if val_tiles[0] and env.is_main:
        v = TileSet(*val_tiles, fold=fold)
        val_cases = [(np.asarray(v.image(i), np.float32), np.asarray(v.target(i))) for i in range(len(v.arrays))]
    mine = ddp.shard(cfg.batch_size, env)
    if three_d:
        pcfg = dataclasses.replace(cfg.patch3d, patch_size=patch_size_3d(cfg, mcfg))
        log.info("3-D patches %s, %d per step (%d on this rank)", pcfg.patch_size, cfg.batch_size, len(mine))
        make = lambda s: make_batch3d(vols, s, cfg.seed, cfg.batch_size, pcfg, cfg.augment3d, samples=mine)  # noqa: E731
    else:
        if cfg.patch_size is not None and len(cfg.patch_size) != 2:
            raise ValueError(f"training.patch_size of a 2-D model must be (h, w), got {cfg.patch_size}")

        def make(s: int) -> tuple[np.ndarray, np.ndarray]:
            xb, yb = make_batch(tiles, s, cfg.seed, cfg.batch_size, context, cfg.fg_prob, cfg.patch_size, cfg.augment)
            if env.distributed:  # the global batch is one draw: every rank builds it and keeps its share
                xb, yb = xb[mine.start:mine.stop], yb[mine.start:mine.stop]
            return xb, as_loss_target(yb, task.target_kind)
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    model.train()
    wait = compute = 0.0
    t_last = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", mininterval=5, disable=not env.is_main)
    batches = (PoolPrefetcher(make, start, end, workers=cfg.data_workers, depth=2 * cfg.data_workers)
               if three_d else Prefetcher(make, start, end))
    for step, (xb, yb) in batches:
        t0 = time.perf_counter()
        wait += t0 - t_last
        x, y = torch.from_numpy(xb).to(device), torch.from_numpy(yb).to(device)
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
        done = step + 1
        row = {"step": done, "loss": ddp.all_reduce_mean({"loss": float(loss.item())}, env)["loss"],
               "lr": opt.param_groups[0]["lr"]}
        if val_cases and (done % cfg.val_every == 0 or done == cfg.steps):
            row.update(validate(net, val_cases, context, icfg, task))
            if row["dice_mean"] > best["dice_mean"]:
                best = {"dice_mean": row["dice_mean"], "step": done}
                _save({"model": net.state_dict()}, out / "best_weights.pt")
            log.info("step %d: loss %.4f, val Dice %s", done, row["loss"],
                     " ".join(f"{n} {row[f'dice_{n}']:.3f}" for n in structures(task)))
        history.append(row)
        if env.is_main:
            tracking.log_metrics({k: v for k, v in row.items() if k != "step"}, step=done)
            if done % cfg.checkpoint_every == 0 or done == end:
                _save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                       "scaler": scaler.state_dict(), "step": done, "history": history, "best": best,
                       "fingerprint": fp}, ckpt_path)
        compute += time.perf_counter() - t0
        t_last = time.perf_counter()
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)  # keep mininterval: logs stay short
    bar.close()
    if end < cfg.steps:
        return {"stopped_at": end}
    if not env.is_main:
        return {"rank": env.rank}
    weights = torch.load(out / "best_weights.pt", weights_only=True)["model"] if (out / "best_weights.pt").exists() else net.state_dict()
    meta = {"model_config": _plain(dataclasses.asdict(mcfg)), "context": context, "modalities": list(task.modalities),
            "task": task.to_dict(), "loss": loss_name, "best": best, "steps": cfg.steps, "seed": cfg.seed,
            "world_size": env.world_size}
    _save({"state_dict": weights, "meta": meta}, out / "model.pt")
    _write_history(history, out / "metrics.csv")
    plot_curves(history, out / "curves.png", structures(task))
    summary = {**meta, "data_wait_fraction": wait / max(wait + compute, 1e-9)}
    write_json(summary, out / "summary.json")
    return summary


def _write_history(history: list[dict], path: Path) -> None:
    keys = sorted({k for r in history for k in r}, key=lambda k: (k != "step", k))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def plot_curves(history: list[dict], path: Path, names: Sequence[str] = ()) -> None:
    """Loss (left) and validation Dice per region or label (right) against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [r["step"] for r in history]
    a.plot(steps, [r["loss"] for r in history], lw=0.8)
    a.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    val = [r for r in history if "dice_mean" in r]
    for k in (*(f"dice_{n}" for n in names), "dice_mean"):
        if val and k in val[0]:
            b.plot([r["step"] for r in val], [r[k] for r in val], marker="o", label=k[5:])
    b.set(xlabel="step", ylabel="Dice", ylim=(0, 1), title="validation (whole cases, stitched)")
    if val:
        b.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model from ``model.pt`` (``weights_only`` load); return it and its metadata."""
    ck = torch.load(path, map_location=device, weights_only=True)
    model = build_model(model_config_from_mapping(_tuples(dict(ck["meta"]["model_config"])), "model_config."))
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck["meta"]
