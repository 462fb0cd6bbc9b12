"""Multi-GPU training of one fold: ``torchrun`` runs :func:`main` once per GPU inside one job.

The workflow's ``train_model`` job calls :func:`launch_torchrun` when ``resources.gpu`` is above
1; by hand (e.g. in a SLURM job holding N GPUs, see :data:`medseg.training.ddp.SLURM_EXAMPLE` and the
README)::

    torchrun --standalone --nproc_per_node N -m medseg.training.launch spec.json

``spec.json`` (written by :func:`write_spec`) holds the training and validation tiles, the fold
folder, the ``models.<key>`` mapping, the global ``training``/``inference`` sections, the task
file and the fold: every rank builds the same configs (:func:`medseg.training.loop.configs_for_model`)
and runs :func:`medseg.training.loop.train`, which shards each global batch and lets rank 0 write.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

from medseg.io import read_json, write_json
from medseg.plan.runs import ModelRun
from medseg.training.config import FoldJob

log = logging.getLogger(__name__)


def write_spec(path: str | Path, job: FoldJob, run: ModelRun) -> Path:
    """Write the JSON spec :func:`main` reads (the fold job and the plan's run); returns its path."""
    spec = {"job": {"train_tiles": list(job.train_tiles), "val_tiles": list(job.val_tiles), "out_dir": str(job.out_dir),
                    "task": job.task.to_dict(), "fold": job.fold}, "run": run.to_dict()}
    write_json(spec, path)
    return Path(path)


def read_spec(path: str | Path) -> tuple[FoldJob, ModelRun]:
    from medseg.tasks.definition import Task

    spec = read_json(path)
    j = spec["job"]
    job = FoldJob(tuple(j["train_tiles"]), tuple(j["val_tiles"]), j["out_dir"], Task.from_dict(j["task"]), j["fold"])
    return job, ModelRun.from_dict(spec["run"])


def run_spec(path: str | Path) -> dict:
    """Train the fold a spec describes (in this process; under torchrun, as this rank)."""
    from medseg.training import ddp
    from medseg.training.loop import train

    job, run = read_spec(path)
    env = ddp.detect_env()
    try:
        summary = train(job, run)
        ddp.barrier(env)  # rank 0 may still be validating or writing
    finally:
        ddp.shutdown(env)
    return summary


def launch_torchrun(nproc: int, job: FoldJob, run: ModelRun, threads: int = 0, timeout_s: float | None = None) -> dict:
    """Run ``nproc`` ranks with torchrun on this node; return rank 0's summary (``summary.json``).

    ``threads``: CPU threads of the whole job, split between the ranks.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_rank = max(threads // nproc, 1) if threads else 0
    run = dataclasses.replace(run, training=dataclasses.replace(run.training, threads=per_rank))
    spec = write_spec(out / "ddp_spec.json", job, run)
    env = {**os.environ, "OMP_NUM_THREADS": str(per_rank or 1)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "medseg.training.launch", str(spec)]
    log.info("launching %d training processes: %s", nproc, " ".join(cmd))
    proc = subprocess.run(cmd, env=env, timeout=timeout_s)
    if proc.returncode:
        raise RuntimeError(f"torchrun training exited with status {proc.returncode} (see the ranks' log above)")
    return read_json(out / "summary.json")


def main(argv: list[str] | None = None) -> None:
    from medseg.logs import setup_logging

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", help="JSON written by medseg.training.launch.write_spec")
    args = ap.parse_args(argv)
    setup_logging(None, logging.INFO)
    run_spec(args.spec)


if __name__ == "__main__":
    main()


def train_job(inputs, out_model: str, wildcards, run: ModelRun, threads: int, gpus: int = 0) -> dict:
    """The workflow's ``train_model`` job: one fold of ``run`` on the job's tiles (``inputs.train``,
    ``inputs.val``, ``inputs.task``), in this process, or with ``gpus > 1`` under torchrun; logs the
    best validation Dice, the data-wait share and the fold's files to the job's run."""
    from medseg import tracking
    from medseg.cohort.sheet import read_task
    from medseg.training.loop import train

    out_dir = Path(out_model).parent
    job = FoldJob(tuple(inputs.train), tuple(inputs.val), str(out_dir), read_task(inputs.task), int(wildcards.fold))
    if not run.training.threads:
        run = dataclasses.replace(run, training=dataclasses.replace(run.training, threads=threads))
    if gpus > 1:  # one process per GPU (DistributedDataParallel); rank 0 writes the outputs
        summary = launch_torchrun(gpus, job, run, threads=threads)
    else:
        summary = train(job, run)
    tracking.log_metrics({"best_val_dice": summary["best"]["dice_mean"],
                          "data_wait_fraction": summary["data_wait_fraction"]})
    for name in ("curves.png", "metrics.csv", "model.pt"):
        tracking.log_artifact(out_dir / name)
    return summary
