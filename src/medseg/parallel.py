"""Run a function over many items on a thread pool, in order, with a progress bar."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def thread_map(fn: Callable[[T], R], items: Iterable[T], threads: int, desc: str, unit: str) -> list[R]:
    """``[fn(x) for x in items]`` with ``threads`` workers (I/O, decompression and ITK release the GIL)."""
    items = list(items)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, unit=unit, mininterval=5))
