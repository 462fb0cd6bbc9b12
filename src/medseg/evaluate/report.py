"""Write the results files of one dataset x model: JSON (with provenance), per-case CSV, box plots."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.tracking import provenance
from medseg.evaluate.aggregate import aggregate, mean_scores, write_cases_csv
from medseg.evaluate.plots import overlay_montage, plot_boxplots, scored_section, select_montage_cases
from medseg.cohort.sheet import read_case_sheet
from medseg.io import read_json, sha256, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultsRequest:
    """What the results of one dataset x model are made of (what the workflow's aggregation job knows).

    Attributes:
        dataset, model: the dataset and model keys.
        metrics: per-case metric files of the held-out cases (:func:`medseg.evaluate.case.evaluate_case`).
        predictions: case -> its prediction file (held-out cases: the montage overlays them).
        references: case -> ((native reference scan, its channel in a 4-D file or None), label map): the
            montage's images.
        predicted_only: unlabelled case -> its prediction file (listed, not scored); unlabelled: those cases.
        excluded: case id -> why it was left out of the dataset (``datasets.<name>.exclude``, or the
            problem the case sheet found): the numbers are over the remaining cases only.
        config, seeds: the resolved config and its seeds (provenance).
        inputs: files whose checksums the provenance records; rule, wildcards: the job's.
        model_files: each fold's ``model.pt`` (:func:`model_block`).
        sheet: the dataset's case sheet: its split column names every case's split (``splits``) and
            its files are checksummed for the scored and predicted cases (``source_scans``).
        task: the dataset's :class:`~medseg.tasks.Task` (the montage outlines its regions or labels by
            name); modality: the name of the scan the montage shows.
        qc_jsons: the cases' preprocessing QC files; the gates that only warned are listed under
            ``qc_warnings`` (case -> reasons).
    """

    dataset: str | None = None
    model: str | None = None
    metrics: Sequence[str] = ()
    predictions: Mapping[str, str] = field(default_factory=dict)
    references: Mapping[str, tuple] = field(default_factory=dict)
    predicted_only: Mapping[str, str] = field(default_factory=dict)
    unlabelled: Sequence[str] = ()
    excluded: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, Any] | None = None
    seeds: Mapping[str, Any] | None = None
    inputs: Sequence[str] = ()
    rule: str | None = None
    wildcards: Mapping[str, str] | None = None
    model_files: Sequence[str] = ()
    sheet: str | None = None
    task: Any = None
    modality: str | None = None
    qc_jsons: Sequence[str] = ()


@dataclass(frozen=True)
class ResultsFiles:
    """Where the results go: the JSON, the per-case CSV, box plots and, optionally, the summary page and montage."""

    json: str
    csv: str
    boxplots: str
    summary: str | None = None
    montage: str | None = None


def qc_warnings(qc_jsons: Sequence[str | Path]) -> dict[str, list[str]]:
    """Case -> the reasons of its preprocessing gates that only warned (``qc_action: warn``)."""
    warnings: dict[str, list[str]] = {}
    for path in qc_jsons:
        found = read_json(path).get("qc_warnings") or []
        if found:
            warnings.setdefault(Path(path).parent.name, []).extend(found)
    return dict(sorted(warnings.items()))


def results_json(req: ResultsRequest, cases: Sequence[Mapping[str, Any]]) -> dict:
    """The results JSON of ``req`` from its cases' metric dicts (schema: ``docs/results_schema.md``)."""
    prov = provenance.collect(req.config, inputs=req.inputs, seeds=req.seeds, rule=req.rule, wildcards=req.wildcards)
    results = aggregate(cases, provenance=prov)
    results["excluded_cases"] = dict(sorted((req.excluded or {}).items()))
    results["predicted_only"] = dict(sorted((req.predicted_only or {}).items()))
    results["qc_warnings"] = qc_warnings(req.qc_jsons)
    results["dataset"] = req.dataset
    results["model"] = model_block(req.model, req.model_files, req.config)
    results["config"] = dict(req.config or {})
    rows = read_case_sheet(req.sheet) if req.sheet else {}
    results["splits"] = {c: {"split": r["split"], "fold": int(r["fold"]) if r.get("fold") else None}
                         for c, r in sorted(rows.items())}
    wanted = [r["case"] for r in cases] + list(req.predicted_only or {})
    results["source_scans"] = {c: source_checksums(rows[c]) for c in sorted(wanted) if c in rows}
    return results


def write_results(req: ResultsRequest, out: ResultsFiles) -> dict:
    """Aggregate the per-case metric files into the results JSON, CSV, box plots, summary page and
    montage of the best, median and worst cases by the first structure's Dice; return the JSON dict."""
    if not req.metrics:
        raise ValueError("no per-case metrics to aggregate: the dataset has no test cases (check split.test_fraction)")
    cases = [read_json(p) for p in req.metrics]
    results = results_json(req, cases)
    write_json(results, out.json)
    split_of = {c: v["split"] for c, v in results["splits"].items()}
    write_cases_csv(cases, out.csv, {"split": split_of, "model": {r["case"]: req.model or "" for r in cases}})
    plot_boxplots(cases, out.boxplots)
    if out.summary is not None:
        write_summary_html(results, cases, split_of, out.summary)
    if out.montage is not None and req.references:
        section = scored_section(cases[0])
        task = req.task
        first = next(iter(task.structures())) if task is not None else next(iter(cases[0][section]))  # WT for BraTS
        picks = select_montage_cases(cases, region=first)
        files = {c: (*req.references[c], req.predictions[c]) for c in req.references}
        overlay_montage([(f"{tag}: {c}", *files[c], v) for tag, c, v in picks], out.montage, structure=first,
                        modality=req.modality, structures=task.structures() if task is not None else None)
    section = scored_section(cases[0])
    means = {r: round(results[section][r]["dice"]["mean"], 4) for r in results[section]}
    log.info("%d cases, mean Dice %s -> %s", len(cases), means, out.json)
    return results


def evaluate_case_job(case: str, pred: str, seg: str, task_json: str, evaluation: Mapping[str, Any],
                      out_json: str) -> dict:
    """The workflow's per-case evaluation job: ``pred`` scored against ``seg`` in the dataset's task
    (``evaluation``: the config section; lesion-wise scores only for BraTS tasks), written to
    ``out_json`` and logged on the job's run."""
    from medseg import tracking
    from medseg.cohort.sheet import read_task
    from medseg.evaluate.case import evaluate_case

    task = read_task(task_json)
    ev = dict(evaluation)
    ev["lesionwise"] = ev.get("lesionwise", False) and bool(task.preset)  # BraTS lesion-wise scores: BraTS tasks
    result = evaluate_case(pred, seg, case_id=case, task=task, **ev)
    write_json(result, out_json)
    tracking.log_metrics({f"{r}.{m}": v for sec in ("regions", "labels") for r, d in result[sec].items()
                          for m, v in d.items() if isinstance(v, float)})
    return result


def aggregate_job(req: ResultsRequest, inputs, outputs, rule: str) -> dict:
    """The workflow's aggregation job: ``req`` with the job's files (``inputs``: metrics,
    predictions, unlabelled predictions, models, qc, sheet, task; ``outputs``: json, csv, boxplots,
    summary, montage), the results written, and the mean test scores logged (``test/dice_WT`` ...) on the
    job's run, the invocation's parent run and the dataset x model's MLflow model."""
    from medseg import tracking
    from medseg.cohort.sheet import read_task

    cases = list(req.references)
    req = dataclasses.replace(
        req, metrics=list(inputs.metrics), predictions=dict(zip(cases, inputs.predictions)),
        predicted_only=dict(zip(req.unlabelled, inputs.unlabelled)), inputs=[*inputs.models, *inputs.metrics],
        rule=rule, wildcards={"dataset": req.dataset, "model": req.model}, model_files=list(inputs.models),
        sheet=inputs.sheet, task=read_task(inputs.task), qc_jsons=list(inputs.qc))
    res = write_results(req, ResultsFiles(outputs.json, outputs.csv, outputs.boxplots, outputs.summary, outputs.montage))
    section = "regions" if res.get("regions") else "labels"
    scores = mean_scores(res, section, ("dice", "hd95"))
    if section == "regions" and res.get("labels"):
        scores |= mean_scores(res, "labels", ("dice", "hd95"), prefix="label_")
    tracking.log_test_scores(req.dataset, req.model, scores, res["n_cases"], results=outputs.json,
                             structures=list(req.task.structures()) if req.task is not None else ())
    tracking.set_tags({"model.arch": res["model"]["arch"], "model.encoder": res["model"]["encoder"],
                       "model.n_parameters": res["model"]["n_parameters"]})
    for f in (outputs.json, outputs.csv, outputs.summary, outputs.boxplots, outputs.montage):
        tracking.log_artifact(f)
    return res


NON_FILE_COLUMNS = ("case_id", "split", "fold", "labelled", "convention", "problem")


def source_checksums(row: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``{column: {"file", "sha256"}}`` of a case sheet row's source files (modalities, ``seg``)."""
    return {k: {"file": v, "sha256": sha256(v)} for k, v in row.items()
            if k not in NON_FILE_COLUMNS and v and Path(v).is_file()}


def model_block(name: str | None, model_files: Sequence[str | Path], config: Mapping[str, Any] | None) -> dict:
    """The trained model: config name, architecture, encoder, parameter count, and per fold its file
    and SHA-256 (:func:`medseg.tracking.provenance.model_facts`); the config's model section when no file is given."""
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
