"""CLI: ``medseg train``: train one fold on tiled cases (what the workflow's ``train_model`` rule runs)."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def _run(path: str | None, model_key: str | None, steps: int | None, device: str | None, threads: int):
    """The plan's run of ``--model`` in the workflow config ``path`` (none: the defaults' timm U-Net)."""
    import dataclasses

    import yaml

    from medseg.plan.runs import resolve_run

    config = {}
    if path is not None:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    models = config.get("models") or {}
    if model_key is None:
        if len(models) > 1:
            raise ValueError(f"--model must name one of the config's models {sorted(models)}")
        model_key = next(iter(models), "model")
    elif path is not None and model_key not in models:
        raise ValueError(f"--model must be one of the config's models {sorted(models)}, got {model_key!r}")
    run = resolve_run({**config, "models": {model_key: models.get(model_key) or {}}}, model_key)
    over = {k: v for k, v in (("steps", steps), ("device", device)) if v}
    if threads and not run.training.threads:
        over["threads"] = threads
    return dataclasses.replace(run, training=dataclasses.replace(run.training, **over)) if over else run


def _train(a: argparse.Namespace) -> int:
    import json

    from medseg.cohort.sheet import read_task
    from medseg.training.config import FoldJob
    from medseg.training.loop import train

    run = _run(a.config, a.model, a.steps, a.device, a.threads)
    job = FoldJob(tuple(a.input), tuple(a.val), a.output, read_task(a.task), a.fold)
    summary = train(job, run)
    log.info("trained: %s", json.dumps(summary.get("best", {})))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    from medseg.cli import add_input, add_output

    p = sub.add_parser("train", help="train one model fold on tiled cases (medseg tile outputs)")
    add_input(p, "tile arrays (.npy, from medseg tile) of the training cases", nargs="+")
    p.add_argument("--val", nargs="+", required=True, help="tile arrays of the validation cases")
    p.add_argument("-t", "--task", required=True, help="task JSON (medseg case-sheet --task)")
    p.add_argument("-c", "--config", default=None,
                   help="workflow config YAML: its training, inference and models sections are used (none given: defaults)")
    p.add_argument("--model", default=None, help="key under models: in --config (none given: its only model)")
    p.add_argument("--fold", type=int, default=0, help="which of the tiles' per-fold normalisations to train on")
    p.add_argument("--steps", type=int, default=None, help="override training.steps")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="override training.device")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of torch (0: torch's default)")
    add_output(p, "fold folder to write (model.pt, checkpoint.pt, metrics.csv, curves.png)")
    p.set_defaults(func=_train)
