"""Shared by the training-data benchmarks: time training steps, split into waiting for data and compute."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator


def time_steps(model, opt, loss_fn: Callable, batches: Iterator, steps: int) -> tuple[float, float]:
    """Run ``steps`` optimiser steps on ``(step, (x, y))`` numpy batches; return (seconds waiting for
    the next batch, seconds of forward + backward + step)."""
    import torch

    wait = compute = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        _, (x, y) = next(batches)
        t1 = time.perf_counter()
        loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        wait += t1 - t0
        compute += time.perf_counter() - t1
    return wait, compute
