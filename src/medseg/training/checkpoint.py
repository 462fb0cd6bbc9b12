"""Resumable training: torch set-up per run and the checkpoint a restarted job may continue from."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from medseg.inference.device import resolve_device
from medseg.tracking.fingerprint import differences, fingerprint
from medseg.training.config import TrainConfig

log = logging.getLogger(__name__)


def seeded_device(cfg: TrainConfig) -> torch.device:
    """Set the training's torch threads, seed and deterministic algorithms; return its device."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return resolve_device(cfg.device)



def resumable_checkpoint(path: Path, device, training, model_cfg, inputs: Sequence, extra: dict) -> tuple[dict, dict]:
    """``(checkpoint, fingerprint)``: the checkpoint at ``path`` if it was written by a run with this
    fingerprint (:mod:`medseg.tracking.fingerprint`: configs and input files), else ``{}`` (a fresh start, logged
    with what changed), and the fingerprint a checkpoint of this run records."""
    ck = torch.load(path, map_location=device, weights_only=True) if path.exists() else {}
    fp = fingerprint(training, model_cfg, inputs, extra, previous=ck.get("fingerprint"))
    if ck and (changed := differences(ck.get("fingerprint"), fp)):
        log.warning("checkpoint %s was trained with a different %s: starting fresh", path, ", ".join(changed))
        ck = {}
    return ck, fp
