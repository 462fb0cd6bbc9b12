"""Training loop: steps-based, resumable from atomic checkpoints, deterministic on CPU.

Resuming: a checkpoint (model, optimiser, scheduler, AMP scaler, step, history, and the
:mod:`medseg.fingerprint` of the configs and tiles it was trained from) is written atomically
every ``checkpoint_every`` steps; a restarted job continues from it if the fingerprint is
unchanged, and starts fresh (logged) if the training config, the model or the inputs changed. Batches are pure
functions of ``(seed, step)`` (:mod:`medseg.data`), so an interrupted-and-resumed run on CPU
ends with the same weights as an uninterrupted one.
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

from medseg import tracking
from medseg.data import AugmentConfig, Prefetcher, TileSet, as_loss_target, make_batch
from medseg.evaluate.metrics import dice
from medseg.fingerprint import differences, fingerprint
from medseg.io import atomic_path, write_json
from medseg.losses import get_loss
from medseg.models import ModelConfig, build_model
from medseg.tasks.definition import Task
from medseg.volume_inference import InferenceConfig, predict_volume, resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Config key ``training``.

    Attributes:
        steps: optimiser steps.
        batch_size: slices per step.
        lr, weight_decay: AdamW settings.
        schedule: ``poly`` (nnU-Net, exponent 0.9) or ``cosine``, after ``warmup`` linear steps.
        loss: loss registry key (:mod:`medseg.losses`).
        context: 2.5-D context slices on each side (0 = 2-D).
        patch_size: in-plane crop (h, w); ``None`` = whole slice.
        fg_prob: probability that a sample is drawn from a slice holding tumour.
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
    loss: str = "dice_bce"
    context: int = 1
    patch_size: tuple[int, int] | None = None
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

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"training.steps and training.batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.schedule not in ("poly", "cosine"):
            raise ValueError(f"training.schedule must be 'poly' or 'cosine', got {self.schedule!r}")
        if not 0 <= self.fg_prob <= 1:
            raise ValueError(f"training.fg_prob must be in [0, 1], got {self.fg_prob}")
        get_loss(self.loss)


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


def train(train_tiles: tuple[Sequence[str], Sequence[str]], val_tiles: tuple[Sequence[str], Sequence[str]],
          out_dir: str | Path, mcfg: ModelConfig, cfg: TrainConfig, icfg: InferenceConfig,
          task: Task, stop_after: int | None = None, fold: int = 0) -> dict:
    """Train one fold; write ``model.pt``, ``checkpoint.pt``, ``metrics.csv``, ``curves.png``.

    Args:
        train_tiles, val_tiles: ``(npy paths, json paths)`` of tiled cases.
        out_dir: fold folder.
        task: the dataset's task: input modalities, output channels and their activation.
        fold: which of the tiles' per-fold normalisations to train on.
        stop_after: stop (as if killed) after this many steps; for tests of resuming.

    Returns:
        Summary with the best validation Dice and the step it was reached.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(cfg.device)
    log.info("training on %s (%d CPU threads)", device, torch.get_num_threads())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    tiles = TileSet(*train_tiles, fold=fold)
    if tiles.n_image != len(task.modalities):
        raise ValueError(f"tiles hold {tiles.n_image} image channels but the task has {len(task.modalities)} "
                         f"modalities {list(task.modalities)}: re-run tile_case")
    mcfg = dataclasses.replace(mcfg, in_channels=tiles.n_image * (2 * cfg.context + 1), out_channels=task.n_outputs)
    model = build_model(mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    loss_fn = get_loss(cfg.loss)
    ckpt_path, history, best = out / "checkpoint.pt", [], {"dice_mean": -1.0, "step": -1}
    start = 0
    ck = torch.load(ckpt_path, map_location=device, weights_only=True) if ckpt_path.exists() else {}
    fp = fingerprint(cfg, mcfg, [*train_tiles[0], *train_tiles[1], *val_tiles[0], *val_tiles[1]],
                     {"fold": fold, "task": task.to_dict()}, previous=ck.get("fingerprint"))
    if ck and (changed := differences(ck.get("fingerprint"), fp)):
        log.warning("checkpoint %s was trained with a different %s: starting fresh", ckpt_path, ", ".join(changed))
        ck = {}
    if ck:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        start, history, best = ck["step"], ck["history"], ck["best"]
        log.info("resuming from %s at step %d", ckpt_path, start)
    else:
        (out / "best_weights.pt").unlink(missing_ok=True)  # of another run: never the result of this one
    val_cases = []
    if val_tiles[0]:
        v = TileSet(*val_tiles, fold=fold)
        val_cases = [(np.asarray(v.image(i), np.float32), np.asarray(v.target(i))) for i in range(len(v.arrays))]
    make = lambda s: make_batch(tiles, s, cfg.seed, cfg.batch_size, cfg.context, cfg.fg_prob, cfg.patch_size, cfg.augment)  # noqa: E731
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    model.train()
    wait = compute = 0.0
    t_last = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", mininterval=5)
    for step, (xb, yb) in Prefetcher(make, start, end):
        t0 = time.perf_counter()
        wait += t0 - t_last
        x, y = torch.from_numpy(xb).to(device), torch.from_numpy(as_loss_target(yb, task.target_kind)).to(device)
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
        row = {"step": done, "loss": float(loss.item()), "lr": opt.param_groups[0]["lr"]}
        if val_cases and (done % cfg.val_every == 0 or done == cfg.steps):
            row.update(validate(model, val_cases, cfg.context, icfg, task))
            if row["dice_mean"] > best["dice_mean"]:
                best = {"dice_mean": row["dice_mean"], "step": done}
                _save({"model": model.state_dict()}, out / "best_weights.pt")
            log.info("step %d: loss %.4f, val Dice %s", done, row["loss"],
                     " ".join(f"{n} {row[f'dice_{n}']:.3f}" for n in structures(task)))
        history.append(row)
        tracking.log_metrics({k: v for k, v in row.items() if k != "step"}, step=done)
        if done % cfg.checkpoint_every == 0 or done == end:
            _save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                   "scaler": scaler.state_dict(), "step": done, "history": history, "best": best, "fingerprint": fp}, ckpt_path)
        compute += time.perf_counter() - t0
        t_last = time.perf_counter()
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)  # keep mininterval: logs stay short
    bar.close()
    if end < cfg.steps:
        return {"stopped_at": end}
    weights = torch.load(out / "best_weights.pt", weights_only=True)["model"] if (out / "best_weights.pt").exists() else model.state_dict()
    meta = {"model_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(mcfg).items()},
            "context": cfg.context, "modalities": list(task.modalities), "task": task.to_dict(),
            "best": best, "steps": cfg.steps, "seed": cfg.seed}
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
    mc = dict(ck["meta"]["model_config"])
    mc = {k: tuple(v) if isinstance(v, list) else v for k, v in mc.items()}
    model = build_model(ModelConfig(**mc))
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck["meta"]
