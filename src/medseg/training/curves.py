"""A training run's history: ``metrics.csv`` and ``curves.png`` (loss, validation Dice per structure)."""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from medseg.io import atomic_path

#: validation curve colours: Okabe-Ito orange, blue, reddish purple, sky blue, vermillion, bluish green,
#: yellow (colour-blind safe; the first three hold no red/green pair); the mean is black
CURVE_COLOURS = ("#E69F00", "#0072B2", "#CC79A7", "#56B4E9", "#D55E00", "#009E73", "#F0E442")


def write_history(history: list[dict], path: Path) -> None:
    keys = sorted({k for r in history for k in r}, key=lambda k: (k != "step", k))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


#: weight of the earlier validations in the smoothed validation Dice that picks the kept weights: an
#: exponential moving average with nnU-Net's weights (its checkpoint_best follows ema = 0.9 ema + 0.1
#: Dice; 0 = the raw Dice). With a few validation cases, one lucky validation does not outrank the
#: more trained weights after it.
VAL_SMOOTHING = 0.9


def kept_score(history: Sequence[dict], smoothing: float = VAL_SMOOTHING) -> float:
    """The smoothed validation Dice after the last validation row of ``history``: the exponential
    moving average of its ``dice_mean`` values (-1 without validation)."""
    ema = -1.0
    for i, r in enumerate(r for r in history if "dice_mean" in r):
        ema = r["dice_mean"] if i == 0 else smoothing * ema + (1 - smoothing) * r["dice_mean"]
    return ema


def best_step(history: Sequence[dict]) -> dict | None:
    """The validation row whose weights ``model.pt`` keeps (:func:`medseg.training.loop.record`): the
    first with the highest :func:`kept_score`; None without validation."""
    rows = [(kept_score(history[:i + 1]), r) for i, r in enumerate(history) if "dice_mean" in r]
    return max(rows, key=lambda sr: sr[0])[1] if rows else None


def plot_curves(history: list[dict], path: Path, names: Sequence[str] = ()) -> None:
    """Loss (left) and validation Dice per region or label (right) against steps.

    Colours are Okabe-Ito's (colour-blind safe, no red/green pair), one per structure, the mean in
    black; a dotted line marks the validation step whose weights ``model.pt`` keeps.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [r["step"] for r in history]
    a.plot(steps, [r["loss"] for r in history], lw=0.8, color="black")
    a.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    val = [r for r in history if "dice_mean" in r]
    keys = [k for k in (*(f"dice_{n}" for n in names), "dice_mean") if val and k in val[0]]
    for i, k in enumerate(keys):
        mean = k == "dice_mean"
        b.plot([r["step"] for r in val], [r[k] for r in val], marker="o", ms=3.5, label=k[5:],
               color="black" if mean else CURVE_COLOURS[i % len(CURVE_COLOURS)], ls="--" if mean else "-")
    best = best_step(history)
    if best is not None:
        b.axvline(best["step"], color="0.5", ls=":", lw=1, label=f"kept: step {best['step']}")
    b.set(xlabel="step", ylabel="Dice", ylim=(0, 1),
          title=f"validation (whole cases, stitched): {len(val)} point{'s' * (len(val) != 1)}")
    if val:
        b.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
