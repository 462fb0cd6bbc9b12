"""CLI: ``medseg train``: train one fold on tiled cases (what the workflow's ``train_model`` rule runs)."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def _sections(path: str | None, model_key: str | None) -> tuple[dict, dict, dict, str]:
    """(training, inference, model mapping, model key) from a workflow config file (or the defaults)."""
    if path is None:
        return {}, {}, {}, model_key or "model"
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f) or {}
    models = config.get("models") or {}
    if model_key is None:
        if len(models) > 1:
            raise ValueError(f"--model must name one of the config's models {sorted(models)}")
        model_key = next(iter(models), "model")
    elif model_key not in models:
        raise ValueError(f"--model must be one of the config's models {sorted(models)}, got {model_key!r}")
    return config.get("training") or {}, config.get("inference") or {}, models.get(model_key) or {}, model_key


def _train(a: argparse.Namespace) -> int:
    import json

    from medseg.cohort.sheet import read_task
    from medseg.config import from_mapping
    from medseg.data import tile_pairs
    from medseg.models import model_config_from_mapping
    from medseg.train import TrainConfig, train
    from medseg.volume_inference import InferenceConfig

    training, inference, model, key = _sections(a.config, a.model)
    training = {**training, **({"steps": a.steps} if a.steps else {}), **({"device": a.device} if a.device else {})}
    tcfg = from_mapping(TrainConfig, {"threads": a.threads, **training}, "training.")
    summary = train(tile_pairs(a.input), tile_pairs(a.val), a.output, model_config_from_mapping(model, f"models.{key}."),
                    tcfg, from_mapping(InferenceConfig, inference, "inference."), read_task(a.task), fold=a.fold)
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
