"""Evaluation people can trust: BraTS metrics per case, lesion-wise scores and cohort summaries.

``evaluate_case`` scores one prediction file against its reference; ``aggregate`` turns the
per-case dicts into the results JSON described in ``docs/results_schema.md``.
"""
from __future__ import annotations

from medseg.evaluate.aggregate import aggregate, write_cases_csv
from medseg.evaluate.case import evaluate_case

__all__ = ["aggregate", "evaluate_case", "write_cases_csv"]
