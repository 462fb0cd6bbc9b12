"""Write the results files of one dataset x model: JSON (with provenance), per-case CSV, box plots."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg import provenance
from medseg.evaluate.aggregate import aggregate, write_cases_csv
from medseg.evaluate.plots import overlay_montage, plot_boxplots, scored_section, select_montage_cases
from medseg.io import read_json, write_json

log = logging.getLogger(__name__)


def write_results(case_jsons: Sequence[str | Path], out_json: str | Path, out_csv: str | Path, out_png: str | Path, *,
                  config: Mapping[str, Any] | None = None, seeds: Mapping[str, Any] | None = None,
                  inputs: Sequence[str | Path] = (), rule: str | None = None,
                  wildcards: Mapping[str, str] | None = None, montage_png: str | Path | None = None,
                  case_files: Mapping[str, tuple] | None = None,
                  excluded: Mapping[str, str] | None = None, predicted_only: Mapping[str, str] | None = None) -> dict:
    """Aggregate per-case metric files into the results JSON, CSV and box plots; return the JSON dict.

    ``montage_png`` + ``case_files`` (case -> (image, reference, prediction) paths): overlay montage
    of the best, median and worst cases by whole-tumour Dice. ``excluded``: case id -> why it was
    left out of the dataset (``datasets.<name>.exclude``, or the problem the case sheet found),
    listed as ``excluded_cases``: the numbers are over the remaining cases only.
    ``predicted_only``: unlabelled case -> its prediction file, listed as ``predicted_only`` (not scored).
    """
    if not case_jsons:
        raise ValueError("no per-case metrics to aggregate: the dataset has no test cases (check split.test_fraction)")
    cases = [read_json(p) for p in case_jsons]
    prov = provenance.collect(config, inputs=inputs, seeds=seeds, rule=rule, wildcards=wildcards)
    results = aggregate(cases, provenance=prov)
    results["excluded_cases"] = dict(sorted((excluded or {}).items()))
    results["predicted_only"] = dict(sorted((predicted_only or {}).items()))
    write_json(results, out_json)
    write_cases_csv(cases, out_csv)
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
