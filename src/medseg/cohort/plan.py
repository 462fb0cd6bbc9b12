"""What the DAG needs to know about a dataset at build time: case ids, layout, splits, folds.

Only folder listings, never image reads, so building the DAG of a 1,000-case dataset is cheap.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from medseg.cohort.layout import case_file, detect_layout, list_cases
from medseg.cohort.splits import assign_splits, fold_cases, held_out_cases


@dataclass(frozen=True)
class DatasetPlan:
    name: str
    is_demo: bool
    root: str  # folder holding the case folders
    layout: str
    cases: tuple[str, ...]
    splits: dict
    n_folds: int
    modalities: tuple[str, ...]
    reference: str

    def folds(self) -> list[int]:
        return list(range(self.n_folds))

    def train_cases(self, fold: int) -> list[str]:
        return fold_cases(self.splits, fold, self.n_folds)[0]

    def val_cases(self, fold: int) -> list[str]:
        return fold_cases(self.splits, fold, self.n_folds)[1]

    def fold_cases(self, fold: int) -> list[str]:
        return sorted(self.train_cases(fold) + self.val_cases(fold))

    def test_cases(self) -> list[str]:
        return held_out_cases(self.splits)

    def raw(self, case: str, key: str) -> str:
        return str(case_file(self.root, case, key, self.layout))


@functools.lru_cache(maxsize=16)
def _plan(name: str, source: str, demo_json: str, split_json: str, modalities: tuple[str, ...], reference: str,
          results: str) -> DatasetPlan:
    import json

    split = json.loads(split_json)
    if source == "demo":
        from medseg.cohort.synth import SynthConfig

        cases = SynthConfig.from_dict(json.loads(demo_json)).case_ids()
        root, layout = str(Path(results) / name / "demo" / "images"), "brats2021"
    else:
        root = str(Path(source).expanduser())
        layout = detect_layout(root)
        cases = list_cases(root, layout)
    n_folds = int(split.get("n_folds", 1))
    splits = assign_splits(cases, split.get("test_fraction", 0.25), n_folds, split.get("val_fraction", 0.15),
                           split.get("seed", 0))
    if reference not in modalities:
        raise ValueError(f"datasets.{name}.reference {reference!r} is not one of its modalities {list(modalities)}")
    return DatasetPlan(name, source == "demo", root, layout, tuple(cases), splits, n_folds, modalities, reference)


def dataset_plan(name: str, ds: dict, results: str = "results") -> DatasetPlan:
    """Plan for config ``datasets.<name>`` (cached per settings)."""
    import json

    return _plan(name, ds.get("source", "demo"), json.dumps(ds.get("demo", {}), sort_keys=True),
                 json.dumps(ds.get("split", {}), sort_keys=True), tuple(ds.get("modalities", ("t1", "t1ce", "t2", "flair"))),
                 ds.get("reference", "t1ce"), results)
