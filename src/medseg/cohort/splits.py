"""Deterministic train/val/test splits and cross-validation folds from case ids and a seed."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SplitConfig:
    """Config key ``datasets.<name>.split`` (MRI datasets): held-out test share, validation share of
    the rest (one fold), number of cross-validation folds, and the seed the order is drawn with."""

    test_fraction: float = 0.25
    val_fraction: float = 0.15
    n_folds: int = 1
    seed: int = 0


def _order(case_ids: Sequence[str], seed: int) -> list[str]:
    key = lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest()  # noqa: E731 - stable across runs
    return sorted(case_ids, key=key)


def assign_splits(case_ids: Sequence[str], test_fraction: float = SplitConfig.test_fraction,
                  n_folds: int = SplitConfig.n_folds, val_fraction: float = SplitConfig.val_fraction,
                  seed: int = SplitConfig.seed) -> dict[str, dict]:
    """Assign each case ``{"split": "train"|"test", "fold": int | None}``.

    Test cases are held out of every fold. With ``n_folds == 1`` a ``val_fraction`` of the rest
    forms fold 0's validation set; with ``n_folds >= 2`` the rest is dealt into folds and fold k
    validates on the cases with ``fold == k``. A case's ``fold`` is the fold it validates.

    Raises:
        ValueError: fractions outside [0, 1), ``n_folds < 1``, or too few cases.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"split.test_fraction must be in [0, 1), got {test_fraction}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"split.val_fraction must be in [0, 1), got {val_fraction}")
    if n_folds < 1:
        raise ValueError(f"split.n_folds must be >= 1, got {n_folds}")
    order = _order(case_ids, seed)
    n_test = int(round(len(order) * test_fraction))
    rest = order[n_test:]
    n_val = max(1, int(round(len(rest) * val_fraction))) if n_folds == 1 else 0
    if len(rest) < max(2, n_folds):
        raise ValueError(f"{len(case_ids)} cases leave {len(rest)} for training: too few for {n_folds} fold(s)")
    out = {c: {"split": "test", "fold": None} for c in order[:n_test]}
    for i, c in enumerate(rest):
        fold = (0 if i < n_val else None) if n_folds == 1 else i % n_folds
        out[c] = {"split": "train", "fold": fold}
    return out


def fold_cases(splits: dict[str, dict], fold: int, n_folds: int) -> tuple[list[str], list[str]]:
    """(training cases, validation cases) of ``fold``."""
    train = sorted(c for c, s in splits.items() if s["split"] == "train" and s["fold"] != fold)
    val = sorted(c for c, s in splits.items() if s["split"] == "train" and s["fold"] == fold)
    return train, val


def held_out_cases(splits: dict[str, dict]) -> list[str]:
    return sorted(c for c, s in splits.items() if s["split"] == "test")
