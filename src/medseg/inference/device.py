"""Where networks run: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``; CUDA checked early."""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def check_cuda() -> str:
    """Fail early, with what to do, when CUDA was asked for but is not usable; return the GPU name."""
    if not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but CUDA is not available on this node "
                           f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); request a GPU node "
                           "(resources.gpu and the SLURM profile's gres) or set training.device: auto to fall back to CPU")
    torch.zeros(1, device="cuda")
    return torch.cuda.get_device_name(0)



def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if os.environ.get("CUDA_VISIBLE_DEVICES") or os.environ.get("SLURM_JOB_GPUS"):
            log.warning("a GPU was allocated (CUDA_VISIBLE_DEVICES=%s) but CUDA is not usable: running on CPU",
                        os.environ.get("CUDA_VISIBLE_DEVICES"))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; set device: auto or cpu")
    return torch.device(name)
