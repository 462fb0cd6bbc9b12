"""Multi-GPU training with DistributedDataParallel, launched by ``torchrun`` inside one job.

One process per GPU, all on one node (SLURM ``--gpus N``; see :data:`SLURM_EXAMPLE`). Each rank
builds only its contiguous share of the global batch (:func:`shard`; batches are pure functions
of ``(seed, step, sample)``, :func:`medseg.training.batches3d.make_batch3d`), DDP averages the gradients, so
with a loss that is a mean over samples and per-sample normalisation (instance norm, as every
medseg 3-D network uses) a step equals the one-process step on the same global batch up to float
rounding. Two things break that equality and are the caller's to avoid: BatchNorm (use
:func:`wrap_model` ``sync_bn=True`` on CUDA) and batch-pooled losses such as nnU-Net's batch
Dice, which each rank computes on its own shard.

Only rank 0 writes files (:attr:`DistEnv.is_main`); metrics are averaged with :func:`all_reduce_mean`.
Without torchrun (no ``WORLD_SIZE`` in the environment) everything degrades to one process with
no process group, so the same training code runs either way.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

SLURM_EXAMPLE = """\
#!/bin/bash
#SBATCH --job-name=medseg-train
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
# one task; torchrun starts one process per GPU and sets RANK / LOCAL_RANK / WORLD_SIZE;
# the spec (medseg.training.launch.write_spec) names the tiles, the fold folder and the configs
torchrun --standalone --nproc_per_node="${SLURM_GPUS_ON_NODE:-4}" -m medseg.training.launch "$1"
"""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job.

    Attributes:
        rank: global rank, ``0 .. world_size - 1``.
        local_rank: rank on this node (the CUDA device index).
        world_size: number of processes.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the one process that writes files and logs (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def detect_env(environ: dict | None = None) -> DistEnv:
    """Read the ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` that torchrun sets; one process otherwise."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", 1))
        rank = int(env.get("RANK", 0))
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError as e:
        raise ValueError(f"RANK/LOCAL_RANK/WORLD_SIZE must be integers (set by torchrun), got {dict(env)}") from e
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank} LOCAL_RANK={local} WORLD_SIZE={world}")
    return DistEnv(rank, local, world)


def init_distributed(env: DistEnv, backend: str | None = None, timeout_s: float = 1800) -> torch.device:
    """Join the process group (nccl on CUDA, gloo on CPU) and return this rank's device.

    With ``world_size == 1`` no group is created. On CUDA each rank uses GPU ``local_rank``.
    """
    cuda = torch.cuda.is_available() and backend != "gloo"
    device = torch.device("cuda", env.local_rank) if cuda else torch.device("cpu")
    if cuda:
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPU(s) visible: "
                             f"--nproc_per_node must not exceed the job's --gpus")
        torch.cuda.set_device(device)
    if env.distributed and not dist.is_initialized():
        backend = backend or ("nccl" if cuda else "gloo")
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, timeout=timedelta(seconds=timeout_s))
        log.info("rank %d/%d joined the %s process group on %s", env.rank, env.world_size, backend, device)
    return device


def shard(batch_size: int, env: DistEnv) -> range:
    """This rank's contiguous samples of the global batch (rank r gets ``[r*b, (r+1)*b)``)."""
    if batch_size % env.world_size:
        raise ValueError(f"training.batch_size ({batch_size}) must be a multiple of the number of GPUs "
                         f"({env.world_size}) so every rank gets the same share")
    per = batch_size // env.world_size
    return range(env.rank * per, (env.rank + 1) * per)


def wrap_model(model: torch.nn.Module, env: DistEnv, device: torch.device, sync_bn: bool = False) -> torch.nn.Module:
    """Move the model to ``device`` and wrap it in DDP when distributed (rank 0's weights win).

    ``sync_bn`` converts BatchNorm layers to SyncBatchNorm (CUDA only) so their statistics span
    the global batch.
    """
    model = model.to(device)
    if not env.distributed:
        return model
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare network (for saving its ``state_dict`` without the ``module.`` prefix)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def all_reduce_mean(values: dict[str, float], env: DistEnv, device: torch.device | None = None) -> dict[str, float]:
    """Average scalar metrics over ranks (identity on one process); every rank gets the result."""
    if not env.distributed or not values:
        return dict(values)
    if device is None:  # nccl reduces CUDA tensors only
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / env.world_size for k, v in zip(keys, t.tolist())}


def barrier(env: DistEnv) -> None:
    """Wait for every rank (e.g. before others read what rank 0 wrote)."""
    if env.distributed and dist.is_initialized():
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    """Leave the process group (call once at the end of training)."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
