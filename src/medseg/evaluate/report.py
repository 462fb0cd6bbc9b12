"""Write the results files of one dataset x model: JSON (with provenance), per-case CSV, box plots."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg import provenance
from medseg.evaluate.aggregate import aggregate, write_cases_csv
from medseg.evaluate.plots import overlay_montage, plot_boxplots, scored_section, select_montage_cases
from medseg.cohort.sheet import read_case_sheet
from medseg.io import read_json, sha256, write_json

log = logging.getLogger(__name__)


def write_results(case_jsons: Sequence[str | Path], out_json: str | Path, out_csv: str | Path, out_png: str | Path, *,
                  config: Mapping[str, Any] | None = None, seeds: Mapping[str, Any] | None = None,
                  inputs: Sequence[str | Path] = (), rule: str | None = None,
                  wildcards: Mapping[str, str] | None = None, montage_png: str | Path | None = None,
                  case_files: Mapping[str, tuple] | None = None,
                  excluded: Mapping[str, str] | None = None, predicted_only: Mapping[str, str] | None = None,
                  dataset: str | None = None, model: str | None = None, model_files: Sequence[str | Path] = (),
                  sheet: str | Path | None = None, out_html: str | Path | None = None, task: Any = None,
                  modality: str | None = None, qc_jsons: Sequence[str | Path] = ()) -> dict:
    """Aggregate per-case metric files into the results JSON, CSV and box plots; return the JSON dict.

    ``montage_png`` + ``case_files`` (case -> (image, reference, prediction) paths): overlay montage
    of the best, median and worst cases by whole-tumour Dice. ``excluded``: case id -> why it was
    left out of the dataset (``datasets.<name>.exclude``, or the problem the case sheet found),
    listed as ``excluded_cases``: the numbers are over the remaining cases only.
    ``predicted_only``: unlabelled case -> its prediction file, listed as ``predicted_only`` (not scored).
    ``dataset``, ``model`` (the config's model name) and ``model_files`` (each fold's ``model.pt``)
    describe the model (:func:`model_block`); ``sheet``: the dataset's case sheet, whose split
    column names every case's split (``splits``) and whose files are checksummed for the scored
    and predicted cases (``source_scans``). ``out_html``: the summary table page
    (:func:`write_summary_html`). ``task``: the dataset's :class:`~medseg.tasks.Task`, whose regions (or
    labels) the montage outlines by name; ``modality``: the name of the scan it shows. ``qc_jsons``:
    the cases' preprocessing QC files (``preprocess/<case>/*_qc.json``); the gates that only warned
    (``qc_action: warn``) are listed under ``qc_warnings`` (case -> reasons). Schema: ``docs/results_schema.md``.
    """
    if not case_jsons:
        raise ValueError("no per-case metrics to aggregate: the dataset has no test cases (check split.test_fraction)")
    cases = [read_json(p) for p in case_jsons]
    prov = provenance.collect(config, inputs=inputs, seeds=seeds, rule=rule, wildcards=wildcards)
    results = aggregate(cases, provenance=prov)
    results["excluded_cases"] = dict(sorted((excluded or {}).items()))
    results["predicted_only"] = dict(sorted((predicted_only or {}).items()))
    warnings: dict[str, list[str]] = {}
    for path in qc_jsons:
        found = read_json(path).get("qc_warnings") or []
        if found:
            warnings.setdefault(Path(path).parent.name, []).extend(found)
    results["qc_warnings"] = dict(sorted(warnings.items()))
    results["dataset"] = dataset
    results["model"] = model_block(model, model_files, config)
    results["config"] = dict(config or {})
    rows = read_case_sheet(sheet) if sheet else {}
    results["splits"] = {c: {"split": r["split"], "fold": int(r["fold"]) if r.get("fold") else None}
                         for c, r in sorted(rows.items())}
    wanted = [r["case"] for r in cases] + list(predicted_only or {})
    results["source_scans"] = {c: source_checksums(rows[c]) for c in sorted(wanted) if c in rows}
    write_json(results, out_json)
    split_of = {c: v["split"] for c, v in results["splits"].items()}
    write_cases_csv(cases, out_csv, {"split": split_of, "model": {r["case"]: model or "" for r in cases}})
    plot_boxplots(cases, out_png)
    if out_html is not None:
        write_summary_html(results, cases, split_of, out_html)
    if montage_png is not None and case_files:
        section = scored_section(cases[0])
        first = next(iter(task.structures())) if task is not None else next(iter(cases[0][section]))  # WT for BraTS
        picks = select_montage_cases(cases, region=first)
        overlay_montage([(f"{tag}: {c}", *case_files[c], v) for tag, c, v in picks], montage_png, structure=first,
                        modality=modality,
                        structures=task.structures() if task is not None else None)
    section = scored_section(cases[0])
    means = {r: round(results[section][r]["dice"]["mean"], 4) for r in results[section]}
    log.info("%d cases, mean Dice %s -> %s", len(cases), means, out_json)
    return results


NON_FILE_COLUMNS = ("case_id", "split", "fold", "labelled", "convention", "problem")


def source_checksums(row: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``{column: {"file", "sha256"}}`` of a case sheet row's source files (modalities, ``seg``)."""
    return {k: {"file": v, "sha256": sha256(v)} for k, v in row.items()
            if k not in NON_FILE_COLUMNS and v and Path(v).is_file()}


def model_block(name: str | None, model_files: Sequence[str | Path], config: Mapping[str, Any] | None) -> dict:
    """The trained model: config name, architecture, encoder, parameter count, and per fold its file
    and SHA-256 (:func:`medseg.provenance.model_facts`); the config's model section when no file is given."""
    folds = [provenance.model_facts(f) | {"file": str(f)} for f in model_files]
    first = folds[0] if folds else {}
    section = dict(((config or {}).get("models") or {}).get(name or "", {}))
    return {"name": name, "arch": first.get("arch", section.get("arch")),
            "encoder": first.get("encoder", section.get("encoder")), "n_parameters": first.get("n_parameters"),
            "config": first.get("model_config", section),
            "folds": [{"fold": k, "file": f["file"], "sha256": f["sha256"]} for k, f in enumerate(folds)]}


TABLE_METRICS = ("dice", "hd95")
_STYLE = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}"
          "th,td{border:1px solid #bbb;padding:.25em .6em;text-align:right}th{background:#eee}"
          "td:first-child,th:first-child{text-align:left}caption{text-align:left;font-weight:bold;margin:.3em 0}")


def write_summary_html(results: Mapping[str, Any], cases: Sequence[Mapping[str, Any]], split_of: Mapping[str, str],
                       out_html: str | Path) -> None:
    """One HTML page: mean ± std Dice and HD95 (mm) per region (or label) over the held-out cases,
    then every case's values with its split (the report's *results table*)."""
    import html

    section = scored_section(cases[0])
    names = list(results[section])
    model = results.get("model") or {}
    head = "".join(f"<th>{html.escape(n)} {m}{' (mm)' if m == 'hd95' else ''}</th>" for n in names for m in TABLE_METRICS)

    def cell(v: float) -> str:
        return f"<td>{v:.4g}</td>"

    summary = "".join(
        f"<tr><td>{m}{' (mm)' if m == 'hd95' else ''}</td>"
        + "".join(f"<td>{results[section][n][m]['mean']:.4g} ± {results[section][n][m]['std']:.2g}</td>" for n in names)
        + "</tr>" for m in TABLE_METRICS)
    rows = "".join(
        f"<tr><td>{html.escape(r['case'])}</td><td>{html.escape(split_of.get(r['case'], ''))}</td>"
        + "".join(cell(r[section][n][m]) for n in names for m in TABLE_METRICS) + "</tr>" for r in cases)
    title = f"{results.get('dataset') or ''} · {model.get('name') or ''}"
    n_excluded = len(results.get("excluded_cases") or {})
    excluded = f"; {n_excluded} case(s) excluded (see the results JSON)" if n_excluded else ""
    body = (f"<h1>Results: {html.escape(title)}</h1>"
            f"<p>Model {html.escape(str(model.get('arch')))} / {html.escape(str(model.get('encoder')))}, "
            f"{model.get('n_parameters') or 0:,} parameters; {results['n_cases']} held-out test cases"
            f"{excluded}.</p>"
            f"<table id='summary'><caption>Mean ± std over the test cases</caption><tr><th>metric</th>"
            + "".join(f"<th>{html.escape(n)}</th>" for n in names) + f"</tr>{summary}</table>"
            f"<table id='cases'><caption>Per case</caption><tr><th>case</th><th>split</th>{head}</tr>{rows}</table>")
    Path(out_html).parent.mkdir(parents=True, exist_ok=True)
    Path(out_html).write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                              f"<style>{_STYLE}</style></head><body>{body}</body></html>\n")
