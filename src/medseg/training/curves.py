"""A training run's history: ``metrics.csv`` and ``curves.png`` (loss, validation Dice per structure)."""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from medseg.io import atomic_path


def write_history(history: list[dict], path: Path) -> None:
    keys = sorted({k for r in history for k in r}, key=lambda k: (k != "step", k))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)



def plot_curves(history: list[dict], path: Path, names: Sequence[str] = ()) -> None:
    """Loss (left) and validation Dice per region or label (right) against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [r["step"] for r in history]
    a.plot(steps, [r["loss"] for r in history], lw=0.8)
    a.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    val = [r for r in history if "dice_mean" in r]
    for k in (*(f"dice_{n}" for n in names), "dice_mean"):
        if val and k in val[0]:
            b.plot([r["step"] for r in val], [r[k] for r in val], marker="o", label=k[5:])
    b.set(xlabel="step", ylabel="Dice", ylim=(0, 1), title="validation (whole cases, stitched)")
    if val:
        b.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
