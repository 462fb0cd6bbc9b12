"""A CPU training step of the workflow's loop against the same network in plain PyTorch.

Plain PyTorch (the peer): the plan's network for config.yaml's ``timm`` key (resnet18 U-Net, 12
input channels = 4 modalities x 3 slices, 3 outputs), AdamW, the run's loss, random batches of the
run's shape ``(batch_size, 12, 64, 64)`` already in memory: forward, backward, step.
medseg: :func:`medseg.training.loop.train` on tiles of a generated demo cohort (4 cases at 2 mm,
tiled as the workflow does), the same run with ``steps`` steps and no validation: batches built and
augmented between steps (on a GPU: ahead, by a thread), AdamW's fused kernel, checkpoints, tracking
as in a workflow job; its steps/s is the loop's own
(each step's wait for its batch and its compute, as ``summary.json`` reports it: set-up and the
files written at the end are not steps).

    python benchmarks/bench_train_step.py                  # 2 threads, 60 steps each
    python benchmarks/bench_train_step.py --threads 1 --steps 40

Prints steps/s of both, their ratio (target >= 0.9), and the share of a medseg step spent
waiting for its batch; benchmarks/out/train_step/bench_train_step.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "train_step"


def demo_tiles(root: Path, run) -> tuple[list[str], object]:
    """Tiles of 4 generated demo cases (preprocessing skipped: the demo's scans normalised by z-score)."""
    from medseg.cohort.synth import SynthConfig, generate_cohort
    from medseg.preprocess.config import NormConfig
    from medseg.preprocess.intensity import normalized_arrays
    from medseg.preprocess.tiling import tile_case
    from medseg.tasks.presets import brats_task

    generate_cohort(SynthConfig(n_cases=4, seed=1), root / "demo", workers=2)
    task = brats_task("brats", "2021")
    npys = []
    norm = root / "norm.json"
    norm.write_text(json.dumps({"folds": [{}]}))
    for case_dir in sorted((root / "demo" / "images").iterdir()):
        c = case_dir.name
        images = {m: str(case_dir / f"{c}_{m}.nii.gz") for m in task.modalities}
        arrays = normalized_arrays(c, images, None, str(norm), NormConfig(method="zscore"), str(case_dir / f"{c}_seg.nii.gz"),
                                   task)
        out = root / "tiles" / f"{c}.npy"
        out.parent.mkdir(parents=True, exist_ok=True)
        tile_case(c, arrays, task, str(out), str(out.with_suffix(".json")))
        npys.append(str(out))
    return npys, task


def plain_steps_per_s(run, n_modalities: int, n_outputs: int, steps: int) -> float:
    from medseg.models import build_model
    from medseg.training.losses import get_loss

    t = run.training
    torch.manual_seed(0)
    net = build_model(run.network_config(n_modalities, n_outputs)).train()
    opt = torch.optim.AdamW(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    loss_fn = get_loss(t.loss)
    c = run.in_channels(n_modalities)
    batches = [(torch.randn(t.batch_size, c, *t.patch_size), (torch.rand(t.batch_size, n_outputs, *t.patch_size) > 0.7)
                .float()) for _ in range(4)]
    for i in range(3):  # warm-up
        x, y = batches[i % 4]
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    t0 = time.perf_counter()
    for i in range(steps):
        x, y = batches[i % 4]
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def medseg_steps_per_s(run, npys: list[str], task, steps: int, out: Path) -> tuple[float, float]:
    from medseg.training.config import FoldJob
    from medseg.training.loop import train

    job = FoldJob(tuple(npys), (), str(out), task)
    warm = dataclasses.replace(run, training=dataclasses.replace(run.training, steps=3))
    train(dataclasses.replace(job, out_dir=str(out / "warm")), warm)
    summary = train(job, run)
    return summary["steps_per_s"], summary["data_wait_fraction"]


def main(argv: list[str] | None = None) -> int:
    from medseg.pipeline.job import set_threads
    from medseg.plan.runs import resolve_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--model", default="timm", help="model key of config.yaml")
    a = ap.parse_args(argv)
    set_threads(a.threads)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    run = resolve_run(config, a.model)
    run = dataclasses.replace(run, training=dataclasses.replace(run.training, steps=a.steps, val_every=10 ** 6,
                                                                threads=a.threads, checkpoint_every=50))
    with tempfile.TemporaryDirectory(prefix="medseg-step-") as tmp:
        npys, task = demo_tiles(Path(tmp), run)
        plain = plain_steps_per_s(run, len(task.modalities), task.n_outputs, a.steps)
        ours, wait = medseg_steps_per_s(run, npys, task, a.steps, Path(tmp) / "fold")
    res = {"threads": a.threads, "steps": a.steps, "model": a.model, "plain_steps_per_s": plain,
           "medseg_steps_per_s": ours, "ratio": ours / plain, "data_wait_fraction": wait,
           "batch": [run.training.batch_size, run.in_channels(len(task.modalities)), *run.training.patch_size]}
    print(f"{a.model}, batch {res['batch']}, {a.threads} thread(s): plain PyTorch {plain:.2f} steps/s, "
          f"medseg {ours:.2f} steps/s, ratio {ours / plain:.2f}; data wait {wait:.1%} of a medseg step")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_train_step.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
