"""Evaluation of a stitched slide prediction against its annotations, per class, at an evaluation mpp.

The reference is the slide's GeoJSON rasterised on the grid of the stitched map's pyramid level
nearest the evaluation mpp; the prediction is that level's label map. Per class: Dice, IoU,
sensitivity, precision, pixel counts, and object-level counts (8-connected components of at
least ``min_object_px`` pixels; a reference object is detected when a predicted object of the
class overlaps it with IoU >= ``object_iou``). Per slide: pixel accuracy and mean Dice over
classes, under ``slide``. Empty classes follow :mod:`medseg.evaluate.edge_cases`, so no
value is NaN. The result has the per-case shape of the results schema (``labels`` section), so
:func:`medseg.evaluate.aggregate.aggregate` summarises slides like MRI cases.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import ndimage

from medseg.config import with_options
from medseg.evaluate.edge_cases import classify, edge_value
from medseg.wsi.annotations import read_mask
from medseg.wsi.config import SlideEvalConfig
from medseg.wsi.outputs import OKABE_ITO, read_labels

log = logging.getLogger(__name__)


def match_objects(ref: np.ndarray, pred: np.ndarray, min_object_px: int = 16, object_iou: float = 0.5) -> dict:
    """Object counts of one class: reference, predicted, detected (IoU >= ``object_iou``), and object F1."""
    ref_lab, n_ref = ndimage.label(ref, structure=np.ones((3, 3)))
    pred_lab, n_pred = ndimage.label(pred, structure=np.ones((3, 3)))
    ref_sizes = np.bincount(ref_lab.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)
    ref_ok = np.flatnonzero(ref_sizes[1:] >= min_object_px) + 1
    pred_ok = np.flatnonzero(pred_sizes[1:] >= min_object_px) + 1
    both = (ref_lab > 0) & (pred_lab > 0)
    pairs, inter = np.unique(np.stack([ref_lab[both], pred_lab[both]]), axis=1, return_counts=True)
    detected, used, ref_set, pred_set = set(), set(), set(ref_ok.tolist()), set(pred_ok.tolist())
    for (r, p), n in sorted(zip(pairs.T.tolist(), inter.tolist()), key=lambda t: -t[1]):
        if r in detected or p in used or r not in ref_set or p not in pred_set:
            continue
        if n / (ref_sizes[r] + pred_sizes[p] - n) >= object_iou:
            detected.add(r)
            used.add(p)
    tp, n_r, n_p = len(detected), len(ref_ok), len(pred_ok)
    f1 = 1.0 if n_r + n_p == 0 else 2 * tp / (n_r + n_p)
    return {"n_ref_objects": n_r, "n_pred_objects": n_p, "n_detected_objects": tp, "object_f1": f1}


def class_metrics(ref: np.ndarray, pred: np.ndarray, min_object_px: int = 16, object_iou: float = 0.5) -> dict:
    """Dice, IoU, sensitivity, precision, pixel counts and object counts of one class (boolean masks)."""
    tp = int(np.count_nonzero(ref & pred))
    n_ref, n_pred = int(np.count_nonzero(ref)), int(np.count_nonzero(pred))
    case = classify(n_ref > 0, n_pred > 0)
    out = {"edge_case": case, "ref_pixels": n_ref, "pred_pixels": n_pred}
    if case == "none":
        out.update(dice=2 * tp / (n_ref + n_pred), iou=tp / (n_ref + n_pred - tp), sensitivity=tp / n_ref,
                   precision=tp / n_pred)
    else:
        out.update(dice=edge_value(case, "dice"), iou=edge_value(case, "iou"),
                   sensitivity=edge_value(case, "sensitivity"), precision=1.0 if n_pred == 0 else 0.0)
    out.update(match_objects(ref, pred, min_object_px, object_iou))
    return out


def evaluate_labels(ref: np.ndarray, pred: np.ndarray, classes: Sequence[str], case: str, mpp: float | None,
                    min_object_px: int = 16, object_iou: float = 0.5) -> dict:
    """Per-slide result from reference and predicted label maps ``(H, W)`` (0 background, i class i)."""
    if ref.shape != pred.shape:
        raise ValueError(f"reference {ref.shape} and prediction {pred.shape} must have the same shape")
    labels = {name: class_metrics(ref == i, pred == i, min_object_px, object_iou)
              for i, name in enumerate(classes, start=1)}
    slide = {"pixel_accuracy": float(np.mean(ref == pred)), "mean_dice": float(np.mean([m["dice"] for m in labels.values()]))}
    return {"case": case, "convention": None, "regions": {}, "labels": labels, "slide": slide,
            "settings": {"mpp": mpp, "min_object_px": min_object_px, "object_iou": object_iou},
            "shape": list(ref.shape)}


def evaluate_slide(zarr_path: str | Path, annotation: str | Path, classes: Sequence[str], case: str,
                   eval_mpp: float | None = None, kind: str = "labels", *, slide_size: tuple[int, int] | None = None,
                   config: SlideEvalConfig | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Evaluate one stitched prediction (``probabilities.zarr``) against its GeoJSON.

    Args:
        zarr_path: stitched probabilities (with ``mpp`` and ``slide_downsample`` attributes).
        annotation: QuPath GeoJSON of the slide.
        classes: class names in label order.
        case: slide id.
        eval_mpp: evaluation microns per pixel (nearest pyramid level of the map; None: the finest).
        kind: ``labels`` or ``regions`` (how probabilities become classes).
        slide_size: level-0 ``(height, width)`` to check the annotation against.
        config: object counting, ``min_object_px`` and ``object_iou``
            (:class:`~medseg.wsi.config.SlideEvalConfig`; default: its defaults). Its ``mpp`` is not
            read: the level is ``eval_mpp``'s.

    Returns:
        ``(result, reference labels, predicted labels)`` at the evaluation level.
    """
    config = SlideEvalConfig() if config is None else config
    group = zarr.open_group(str(zarr_path), mode="r")
    mpp0 = group.attrs.get("mpp")
    n_levels = sum(1 for k in group.array_keys() if k.isdigit())
    level = 0
    if eval_mpp is not None:
        if mpp0 is None:
            raise ValueError(f"evaluation mpp {eval_mpp} was requested but {zarr_path} has no mpp (the slide has "
                             "none); set datasets.<name>.mpp")
        level = int(np.argmin([abs(np.log(mpp0 * 2**i / eval_mpp)) for i in range(n_levels)]))
    pred, level, ds = read_labels(zarr_path, kind, level=level)
    ref = read_mask(annotation, classes, pred.shape, ds, slide_size=slide_size)
    mpp = None if mpp0 is None else mpp0 * 2**level
    result = evaluate_labels(ref, pred, classes, case, mpp, config.min_object_px, config.object_iou)
    log.info("%s: %s, pixel accuracy %.3f at %s mpp", case, ", ".join(
        f"{c} Dice {result['labels'][c]['dice']:.3f}" for c in classes), result["slide"]["pixel_accuracy"], mpp)
    return result, ref, pred


def plot_outlines(rgb: np.ndarray, ref: np.ndarray, pred: np.ndarray, classes: Sequence[str], out_png: str | Path,
                  title: str = "") -> None:
    """Thumbnail with reference (solid) and predicted (dashed) outlines per class, Okabe-Ito colours.

    ``ref`` and ``pred`` are label maps; they are resampled (nearest) to the thumbnail ``rgb``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from medseg.io import atomic_path

    h, w = rgb.shape[:2]

    def fit(m: np.ndarray) -> np.ndarray:
        iy = np.minimum((np.arange(h) + 0.5) * m.shape[0] / h, m.shape[0] - 1).astype(int)
        ix = np.minimum((np.arange(w) + 0.5) * m.shape[1] / w, m.shape[1] - 1).astype(int)
        return m[iy][:, ix]

    ref, pred = fit(ref), fit(pred)
    fig, ax = plt.subplots(figsize=(7, 7 * h / w + 0.6))
    ax.imshow(rgb)
    handles = []
    for i, name in enumerate(classes, start=1):
        colour = np.array(OKABE_ITO[(i - 1) % len(OKABE_ITO)]) / 255
        for mask, style in ((ref == i, "solid"), (pred == i, "dashed")):
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linestyles=style, linewidths=1.4)
        handles += [Line2D([], [], color=colour, ls="-", label=f"{name} reference"),
                    Line2D([], [], color=colour, ls="--", label=f"{name} prediction")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=8, frameon=False)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


@dataclass(frozen=True)
class ResultsProvenance:
    """What the provenance of a results file records (:func:`medseg.tracking.provenance.collect`).

    Attributes:
        config: the resolved config (hashed).
        inputs: files whose checksums are recorded.
        rule, wildcards: the workflow job's rule name and wildcards.
    """

    config: Mapping[str, Any] | None = None
    inputs: Sequence[str | Path] = ()
    rule: str | None = None
    wildcards: Mapping[str, str] | None = None

    def collect(self) -> dict[str, Any]:
        """The provenance block of the results JSON."""
        from medseg.tracking import provenance

        return provenance.collect(self.config, inputs=self.inputs, rule=self.rule, wildcards=self.wildcards)


def write_slide_results(case_jsons: Sequence[str | Path], out_json: str | Path, out_csv: str | Path,
                        out_png: str | Path, *, excluded: dict[str, str] | None = None,
                        predicted_only: dict[str, str] | None = None, provenance: ResultsProvenance | None = None,
                        **options) -> dict:
    """Aggregate per-slide results into ``results/<dataset>_<model>.json`` (the MRI schema), CSV and box plots.

    The schema's ``labels`` section holds the per-class summaries; ``slides`` adds the per-slide
    pixel accuracy and mean Dice; ``excluded_cases`` lists slides left out with the reason,
    ``predicted_only`` the unannotated slides' prediction folders (predicted, not scored).
    ``provenance``: the config, checksummed inputs, rule and wildcards recorded
    (:class:`ResultsProvenance`); ``**options``: its fields overriding it (``config=...``, ...; an
    unknown name raises ``ValueError`` listing the valid ones).
    """
    from medseg.evaluate.aggregate import aggregate, summary, write_cases_csv
    from medseg.evaluate.plots import plot_boxplots
    from medseg.io import read_json, write_json

    provenance = with_options(ResultsProvenance() if provenance is None else provenance, options,
                              "write_slide_results")
    if not case_jsons:
        raise ValueError("no per-slide metrics to aggregate: no test slide (check split.test_fraction)")
    cases = [read_json(p) for p in case_jsons]
    results = aggregate(cases, provenance=provenance.collect())
    results["slides"] = {k: summary({c["case"]: c["slide"][k] for c in cases}) for k in ("pixel_accuracy", "mean_dice")}
    results["excluded_cases"] = dict(sorted((excluded or {}).items()))
    results["predicted_only"] = dict(sorted((predicted_only or {}).items()))
    write_json(results, out_json)
    write_cases_csv(cases, out_csv)
    plot_boxplots(cases, out_png, metrics=("dice", "iou", "sensitivity", "precision"))
    log.info("%d slides, mean Dice %s -> %s", len(cases),
             {c: round(v["dice"]["mean"], 4) for c, v in results["labels"].items()}, out_json)
    return results


def evaluate_slide_job(slide_id: str, slide: str, annotation: str, tiff: str, recipe, out_json: str,
                       out_png: str) -> dict:
    """The workflow's slide evaluation job: the stitched map beside ``tiff`` scored against the
    annotation at ``recipe.evaluation``; the result JSON and a thumbnail with both outlines."""
    from medseg.io import write_json
    from medseg.wsi.slide import open_slide
    from medseg.wsi.tissue import read_thumbnail

    ev = recipe.evaluation
    with open_slide(slide) as s:
        size = (s.dimensions[1], s.dimensions[0])
        thumb, _ = read_thumbnail(s, 1024)
    result, ref, pred = evaluate_slide(Path(tiff).parent / "probabilities.zarr", annotation, recipe.classes, slide_id,
                                       ev.mpp, "labels", slide_size=size, config=ev)
    write_json(result, out_json)
    dice = ", ".join(f"{c} {result['labels'][c]['dice']:.2f}" for c in recipe.classes)
    plot_outlines(thumb, ref, pred, recipe.classes, out_png, f"{slide_id}: Dice {dice} (solid: reference, dashed: prediction)")
    return result


def aggregate_slides_job(config: dict, inputs, outputs, rule: str, wildcards: dict) -> dict:
    """The workflow's slide aggregation job: the results files, and the mean test scores per class
    (named as the MRI branch names them) logged on the job's run and the invocation's parent run."""
    from medseg import tracking
    from medseg.evaluate.aggregate import mean_scores  # not .report: it needs pandas, which the wsi env lacks
    from medseg.wsi.listing import sheet_problems

    predicted = {Path(t).parent.name: str(Path(t).parent) for t in inputs.predicted}  # unannotated slides
    res = write_slide_results(inputs.metrics, outputs.json, outputs.csv, outputs.boxplots,
                              excluded=sheet_problems(inputs.sheet), predicted_only=predicted,
                              provenance=ResultsProvenance(config, [inputs.model, *inputs.metrics], rule, wildcards))
    scores = mean_scores(res, "labels", ("dice", "iou"))
    scores["pixel_accuracy"] = res["slides"]["pixel_accuracy"]["mean"]
    tracking.log_test_scores(wildcards["dataset"], wildcards["model"], scores, res["n_cases"], results=outputs.json)
    for f in (outputs.json, outputs.csv, outputs.boxplots):
        tracking.log_artifact(f)
    return res
