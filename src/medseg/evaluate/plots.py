"""Figures for an evaluation report: metric box plots and best/median/worst overlay montages.

matplotlib is imported inside the functions with the non-interactive Agg backend, so
importing this module is cheap and works without a display.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.io import atomic_path, read_labels

log = logging.getLogger(__name__)

BOXPLOT_METRICS = ("dice", "hd95", "assd", "nsd")
REF_COLOUR, PRED_COLOUR = "lime", "red"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out_png: str | Path) -> None:
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    log.info("wrote %s", out_png)


def plot_boxplots(case_results: Sequence[dict], out_png: str | Path, metrics: Sequence[str] = BOXPLOT_METRICS) -> None:
    """One panel per metric, one box per region (every case drawn as a point too).

    Args:
        case_results: per-case dicts from :func:`~medseg.evaluate.case.evaluate_case`.
        out_png: output PNG, written atomically.
        metrics: metric keys of the ``regions`` section to plot.
    """
    if not case_results:
        raise ValueError("case_results is empty; nothing to plot")
    plt = _pyplot()
    section = scored_section(case_results[0])
    regions = list(case_results[0][section])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        data = [[res[section][r][metric] for res in case_results] for r in regions]
        ax.boxplot(data, showfliers=False)
        for i, vals in enumerate(data, start=1):
            ax.scatter(np.full(len(vals), i) + np.linspace(-0.08, 0.08, len(vals)), vals, s=8, alpha=0.6, color="k")
        ax.set_xticks(range(1, len(regions) + 1), regions)
        unit = " (mm)" if metric in ("hd95", "assd") else ""
        ax.set_title(f"{metric}{unit}, n={len(case_results)}")
    _save(plt, fig, out_png)


def scored_section(result: dict) -> str:
    """``regions`` when the task has regions (BraTS: WT, TC, ET), else ``labels``."""
    return "regions" if result.get("regions") else "labels"


def select_montage_cases(case_results: Sequence[dict], region: str | None = None,
                         metric: str = "dice") -> list[tuple[str, str, float]]:
    """Pick the best, median and worst cases by ``region`` ``metric`` (higher is better; default:
    the first region, or the first label of a task without regions).

    Returns:
        ``[("best", case, value), ("median", case, value), ("worst", case, value)]``.
    """
    if not case_results:
        raise ValueError("case_results is empty; no case to show")
    section = scored_section(case_results[0])
    region = region or next(iter(case_results[0][section]))
    ranked = sorted(case_results, key=lambda r: (-r[section][region][metric], r["case"]))
    picks = [("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])]
    return [(tag, r["case"], float(r[section][region][metric])) for tag, r in picks]


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def overlay_montage(cases: Sequence[tuple[str, str | Path | tuple, str | Path, str | Path, float]], out_png: str | Path,
                    structure: str = "foreground") -> None:
    """Axial slices with reference (green) and prediction (red) tumour outlines, one panel per case.

    Each panel shows the axial slice with the largest reference tumour area (largest predicted
    area if the reference is empty) of the whole tumour (any label > 0).

    Args:
        cases: ``(case_id, image_path, ref_path, pred_path, dice)`` tuples, e.g. best/median/worst;
            ``image_path`` may be ``(path, channel)`` for a 4-D source file.
        structure: what the Dice in the titles is of.
        out_png: output PNG, written atomically.
    """
    if not cases:
        raise ValueError("cases is empty; nothing to draw")
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    fig, axes = plt.subplots(1, len(cases), figsize=(3.6 * len(cases), 3.9), squeeze=False)
    for ax, (case_id, image_path, ref_path, pred_path, dsc) in zip(axes[0], cases):
        from medseg.cohort.sources import read_source

        path, channel = image_path if isinstance(image_path, tuple) else (image_path, None)
        image = sitk.GetArrayFromImage(read_source(path, case_id, channel))
        ref = sitk.GetArrayFromImage(read_labels(ref_path, case=case_id)) > 0
        pred = sitk.GetArrayFromImage(read_labels(pred_path, case=case_id)) > 0
        if not (image.shape == ref.shape == pred.shape):
            raise ValueError(f"case {case_id!r}: image {image.shape}, reference {ref.shape} and prediction {pred.shape} differ in size")
        area = (ref if ref.any() else pred).sum(axis=(1, 2))
        z = int(np.argmax(area))
        lo, hi = np.percentile(image[z], [1, 99])
        ax.imshow(image[z], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        for mask, colour in ((ref[z], REF_COLOUR), (pred[z], PRED_COLOUR)):
            edge = np.ma.masked_where(~_outline(mask), np.ones(mask.shape))
            ax.imshow(edge, cmap=ListedColormap([colour]), interpolation="none")
        ax.set_title(f"{case_id}\n{structure} Dice {dsc:.3f}, slice {z}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"reference {REF_COLOUR}, prediction {PRED_COLOUR}", fontsize=9)
    _save(plt, fig, out_png)
