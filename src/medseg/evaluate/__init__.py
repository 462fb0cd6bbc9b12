"""Evaluation people can trust: BraTS metrics per case, lesion-wise scores and cohort summaries.

:func:`medseg.evaluate.case.evaluate_case` scores one prediction file against its reference;
:func:`medseg.evaluate.aggregate.aggregate` turns the per-case dicts into the results JSON described
in ``docs/results_schema.md``. The package itself imports nothing: loading the workflow reads
:mod:`medseg.evaluate.config` without scipy.
"""
