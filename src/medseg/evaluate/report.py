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
                  sheet: str | Path | None = None) -> dict:
    """Aggregate per-case metric files into the results JSON, CSV and box plots; return the JSON dict.

    ``montage_png`` + ``case_files`` (case -> (image, reference, prediction) paths): overlay montage
    of the best, median and worst cases by whole-tumour Dice. ``excluded``: case id -> why it was
    left out of the dataset (``datasets.<name>.exclude``, or the problem the case sheet found),
    listed as ``excluded_cases``: the numbers are over the remaining cases only.
    ``predicted_only``: unlabelled case -> its prediction file, listed as ``predicted_only`` (not scored).
    ``dataset``, ``model`` (the config's model name) and ``model_files`` (each fold's ``model.pt``)
    describe the model (:func:`model_block`); ``sheet``: the dataset's case sheet, whose split
    column names every case's split (``splits``) and whose files are checksummed for the scored
    and predicted cases (``source_scans``). Schema: ``docs/results_schema.md``.
    """
    if not case_jsons:
        raise ValueError("no per-case metrics to aggregate: the dataset has no test cases (check split.test_fraction)")
    cases = [read_json(p) for p in case_jsons]
    prov = provenance.collect(config, inputs=inputs, seeds=seeds, rule=rule, wildcards=wildcards)
    results = aggregate(cases, provenance=prov)
    results["excluded_cases"] = dict(sorted((excluded or {}).items()))
    results["predicted_only"] = dict(sorted((predicted_only or {}).items()))
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
    if montage_png is not None and case_files:
        picks = select_montage_cases(cases)
        section = scored_section(cases[0])
        overlay_montage([(f"{tag}: {c}", *case_files[c], v) for tag, c, v in picks], montage_png,
                        structure=next(iter(cases[0][section])))
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
