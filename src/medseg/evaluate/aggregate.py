"""Cohort summaries of per-case results: the results JSON, a per-case CSV, and (re-exported) plots.

Every case appears in every summary; a case lacking a metric that others have, a duplicate
case id, cases computed with different settings, or a non-finite value are errors, never a
silently shorter list. Schema: ``docs/results_schema.md``.
"""
from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.evaluate.edge_cases import EDGE_CASES
from medseg.evaluate.plots import overlay_montage, plot_boxplots, scored_section, select_montage_cases
from medseg.io import atomic_path

__all__ = ["aggregate", "overlay_montage", "plot_boxplots", "select_montage_cases", "summary", "write_cases_csv"]
log = logging.getLogger(__name__)

SCHEMA_VERSION = 4  # 2: excluded_cases is {case id: reason}; 3: any task (task, predicted_only, label-only edge cases);
# 4: dataset, model (arch, encoder, parameters, weights checksums), config, splits, source_scans; CSV rounded with split, model
CSV_DECIMALS = 4
SECTIONS = ("regions", "labels", "lesionwise")
CSV_PREFIX = {"regions": "", "labels": "label_", "lesionwise": "lesionwise_"}


def _section(result: dict, section: str) -> dict[str, dict]:
    """``{name: {metric: value}}`` of one section of a case result (lesion-wise is nested)."""
    block = result.get(section) or {}
    return block.get("regions", {}) if section == "lesionwise" else block


def iter_values(result: dict, section: str) -> Iterator[tuple[str, str, float]]:
    """Yield ``(name, metric, value)`` for every numeric metric of ``section`` in one case result."""
    for name, ms in _section(result, section).items():
        for metric, v in ms.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                yield name, metric, float(v)


def summary(values: dict[str, float]) -> dict[str, Any]:
    """Mean, std (population), median, quartiles, min, max and the per-case values."""
    arr = np.array(list(values.values()), dtype=float)
    q1, med, q3 = np.percentile(arr, [25, 50, 75])
    return {"mean": float(arr.mean()), "std": float(arr.std()), "median": float(med), "q1": float(q1), "q3": float(q3),
            "min": float(arr.min()), "max": float(arr.max()), "n": int(arr.size), "values": dict(values)}


def _collect(case_results: Sequence[dict], section: str) -> dict[str, dict[str, dict[str, float]]]:
    table: dict[str, dict[str, dict[str, float]]] = {}
    for res in case_results:
        for name, metric, v in iter_values(res, section):
            if not math.isfinite(v):
                raise ValueError(f"case {res['case']!r}: {section} {name} {metric} is {v}; metrics must be finite")
            table.setdefault(name, {}).setdefault(metric, {})[res["case"]] = v
    cases = [r["case"] for r in case_results if section in r]
    for name, ms in table.items():
        for metric, vals in ms.items():
            if missing := [c for c in cases if c not in vals]:
                raise ValueError(f"{section} {name} {metric} is missing for cases {missing}")
    return table


def _check_cases(case_results: Sequence[dict]) -> list[str]:
    if not case_results:
        raise ValueError("case_results is empty; nothing to aggregate")
    ids = [r["case"] for r in case_results]
    if dups := sorted({c for c in ids if ids.count(c) > 1}):
        raise ValueError(f"case_results holds duplicate case ids {dups}")
    for key in ("settings", "convention"):
        if len({repr(r.get(key)) for r in case_results}) > 1:
            raise ValueError(f"case_results mix different {key!r}; evaluate all cases with the same settings")
    if 0 < sum("lesionwise" in r for r in case_results) < len(case_results):
        raise ValueError(f"lesion-wise results missing for cases {[r['case'] for r in case_results if 'lesionwise' not in r]}")
    return ids


def aggregate(case_results: list[dict], *, provenance: dict | None = None) -> dict:
    """Summarise per-case results (from :func:`~medseg.evaluate.case.evaluate_case`) into the results JSON.

    Returns:
        ``{"schema_version", "n_cases", "cases", "convention", "settings", "regions", "labels",
        "edge_cases"[, "lesionwise"], "provenance"}``; see ``docs/results_schema.md``.

    Raises:
        ValueError: empty input, duplicate case ids, mixed settings, missing or non-finite metrics.
    """
    ids = _check_cases(case_results)
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "n_cases": len(ids), "cases": ids,
                           "task": case_results[0].get("task"), "convention": case_results[0].get("convention"),
                           "settings": case_results[0].get("settings")}
    for section in SECTIONS:
        if section == "lesionwise" and "lesionwise" not in case_results[0]:
            continue
        table = _collect(case_results, section)
        out[section] = {name: {m: summary(v) for m, v in ms.items()} for name, ms in table.items()}
    if "lesionwise" in out:
        out["lesionwise_edition"] = case_results[0]["lesionwise"].get("edition")
    edge: dict[str, dict[str, int]] = {}
    for res in case_results:
        for name, ms in res[scored_section(res)].items():
            counts = edge.setdefault(name, dict.fromkeys(EDGE_CASES, 0))
            counts[ms["edge_case"]] += 1
    out["edge_cases"] = edge
    out["provenance"] = provenance
    log.info("aggregated %d cases: %s", len(ids), ", ".join(
        f"{r} dice {s['dice']['mean']:.3f}" for r, s in out[scored_section(case_results[0])].items()))
    return out


def mean_scores(results: Mapping[str, Any], section: str, metrics: Sequence[str], prefix: str = "") -> dict[str, float]:
    """``{<metric>_<prefix><name>: mean}`` of a results JSON's ``section`` (regions or labels): the
    test scores each aggregation logs, named alike in every run (comparable in the MLflow UI)."""
    return {f"{metric}_{prefix}{name}": s[metric]["mean"] for name, s in (results.get(section) or {}).items()
            for metric in metrics if metric in s}


def _round(v: float, decimals: int) -> float | int:
    r = round(v, decimals)
    return int(r) if r == int(r) and abs(r) < 2**53 else r


def write_cases_csv(case_results: Sequence[dict], path: str | Path, leading: Mapping[str, Mapping[str, Any]] | None = None,
                    decimals: int = CSV_DECIMALS) -> None:
    """Write one row per case, columns ``case``, the ``leading`` columns (name -> {case: value}, e.g.
    ``split``, ``model``), then ``<region>_<metric>`` (``label_<label>_<metric>``,
    ``lesionwise_<region>_<metric>``, values rounded to ``decimals`` decimals) plus
    ``<region>_edge_case``; atomically.
    """
    rows = []
    for res in case_results:
        row: dict[str, Any] = {"case": res["case"]}
        row |= {col: values.get(res["case"], "") for col, values in (leading or {}).items()}
        for section in SECTIONS:
            row |= {f"{CSV_PREFIX[section]}{n}_{m}": _round(v, decimals) for n, m, v in iter_values(res, section)}
        row |= {f"{CSV_PREFIX[scored_section(res)]}{n}_edge_case": ms["edge_case"] for n, ms in res[scored_section(res)].items()}
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
