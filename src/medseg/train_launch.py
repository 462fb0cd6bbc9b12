"""Multi-GPU training of one fold: ``torchrun`` runs :func:`main` once per GPU inside one job.

The workflow's ``train_model`` job calls :func:`launch_torchrun` when ``resources.gpu`` is above
1; by hand (e.g. in a SLURM job holding N GPUs, see :data:`medseg.ddp.SLURM_EXAMPLE` and the
README)::

    torchrun --standalone --nproc_per_node N -m medseg.train_launch spec.json

``spec.json`` (written by :func:`write_spec`) holds the training and validation tiles, the fold
folder, the ``models.<key>`` mapping, the global ``training``/``inference`` sections, the task
file and the fold: every rank builds the same configs (:func:`medseg.train.configs_for_model`)
and runs :func:`medseg.train.train`, which shards each global batch and lets rank 0 write.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from medseg.io import read_json, write_json

log = logging.getLogger(__name__)


def write_spec(path: str | Path, train_npys: Sequence[str], val_npys: Sequence[str], out_dir: str | Path,
               model: dict, training: dict, inference: dict, task_json: str | Path, fold: int = 0,
               key: str = "model", threads: int = 0) -> Path:
    """Write the JSON spec :func:`main` reads; returns its path."""
    spec = {"train": [str(p) for p in train_npys], "val": [str(p) for p in val_npys], "out_dir": str(out_dir),
            "model": dict(model), "training": dict(training or {}), "inference": dict(inference or {}),
            "task": str(task_json), "fold": int(fold), "key": key, "threads": int(threads)}
    write_json(spec, path)
    return Path(path)


def run_spec(path: str | Path) -> dict:
    """Train the fold a spec describes (in this process; under torchrun, as this rank)."""
    from medseg import ddp
    from medseg.cohort.sheet import read_task
    from medseg.data import tile_pairs
    from medseg.train import configs_for_model, train

    spec = read_json(path)
    mcfg, tcfg, icfg = configs_for_model(spec["model"], spec["training"], spec["inference"], spec["key"],
                                         threads=spec.get("threads", 0))
    env = ddp.detect_env()
    try:
        summary = train(tile_pairs(spec["train"]), tile_pairs(spec["val"]), spec["out_dir"], mcfg, tcfg, icfg,
                        read_task(spec["task"]), fold=spec["fold"])
        ddp.barrier(env)  # rank 0 may still be validating or writing
    finally:
        ddp.shutdown(env)
    return summary


def launch_torchrun(nproc: int, train_npys: Sequence[str], val_npys: Sequence[str], out_dir: str | Path,
                    model: dict, training: dict, inference: dict, task_json: str | Path, fold: int = 0,
                    key: str = "model", threads: int = 0, timeout_s: float | None = None) -> dict:
    """Run ``nproc`` ranks with torchrun on this node; return rank 0's summary (``summary.json``).

    ``threads``: CPU threads of the whole job, split between the ranks.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = write_spec(out / "ddp_spec.json", train_npys, val_npys, out, model, training, inference, task_json,
                      fold, key, max(threads // nproc, 1) if threads else 0)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(threads // nproc, 1) if threads else 1)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "medseg.train_launch", str(spec)]
    log.info("launching %d training processes: %s", nproc, " ".join(cmd))
    proc = subprocess.run(cmd, env=env, timeout=timeout_s)
    if proc.returncode:
        raise RuntimeError(f"torchrun training exited with status {proc.returncode} (see the ranks' log above)")
    return read_json(out / "summary.json")


def main(argv: list[str] | None = None) -> None:
    from medseg.logs import setup_logging

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", help="JSON written by medseg.train_launch.write_spec")
    args = ap.parse_args(argv)
    setup_logging(None, logging.INFO)
    run_spec(args.spec)


if __name__ == "__main__":
    main()
