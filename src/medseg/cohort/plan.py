"""What the DAG needs to know about a dataset at build time: case ids, layout, splits, folds.

Only folder listings, never image reads, so building the DAG of a 1,000-case dataset is cheap.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
    excluded: Mapping[str, str] = field(default_factory=dict)  # case id -> why it was left out

    def without(self, problems: Mapping[str, str]) -> DatasetPlan:
        """This plan minus ``problems`` (case id -> reason); every other case keeps its split and fold."""
        drop = {c: r for c, r in problems.items() if c in self.splits}
        if not drop:
            return self
        return replace(self, cases=tuple(c for c in self.cases if c not in drop),
                       splits={c: s for c, s in self.splits.items() if c not in drop},
                       excluded={**self.excluded, **drop})

    def folds(self) -> list[int]:
        return list(range(self.n_folds))

    @functools.cached_property
    def _fold_lists(self) -> dict[int, tuple[tuple[str, ...], tuple[str, ...]]]:
        # computed once: input functions ask for these for every job of a 1,000-case DAG
        return {k: tuple(tuple(x) for x in fold_cases(self.splits, k, self.n_folds)) for k in range(self.n_folds)}

    @functools.cached_property
    def _test_cases(self) -> tuple[str, ...]:
        return tuple(held_out_cases(self.splits))

    @functools.cached_property
    def _trained_cases(self) -> tuple[str, ...]:
        return tuple(sorted(c for c, s in self.splits.items() if s["split"] == "train"))

    def train_cases(self, fold: int) -> list[str]:
        return list(self._fold_lists[fold][0])

    def val_cases(self, fold: int) -> list[str]:
        return list(self._fold_lists[fold][1])

    def trained_cases(self) -> list[str]:
        """Cases that train or validate some fold (every case but the held-out test cases)."""
        return list(self._trained_cases)

    def test_cases(self) -> list[str]:
        return list(self._test_cases)

    def is_test(self, case: str) -> bool:
        return self.splits[case]["split"] == "test"

    def raw(self, case: str, key: str) -> str:
        return str(case_file(self.root, case, key, self.layout))


@functools.lru_cache(maxsize=16)
def _plan(name: str, source: str, demo_json: str, split_json: str, modalities: tuple[str, ...], reference: str,
          results: str, exclude: tuple[str, ...] = ()) -> DatasetPlan:
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
    unknown = sorted(set(exclude) - set(cases))
    if unknown:
        raise ValueError(f"datasets.{name}.exclude lists case(s) that are not in {root}: {unknown}")
    n_folds = int(split.get("n_folds", 1))
    splits = assign_splits(cases, split.get("test_fraction", 0.25), n_folds, split.get("val_fraction", 0.15),
                           split.get("seed", 0))
    if reference not in modalities:
        raise ValueError(f"datasets.{name}.reference {reference!r} is not one of its modalities {list(modalities)}")
    # excluded cases are dropped after splitting: every other case keeps its split and fold
    full = DatasetPlan(name, source == "demo", root, layout, tuple(cases), splits, n_folds, modalities, reference)
    return full.without({c: f"datasets.{name}.exclude" for c in sorted(exclude)})


def dataset_plan(name: str, ds: dict, results: str = "results") -> DatasetPlan:
    """Plan for config ``datasets.<name>`` (cached per settings)."""
    import json

    return _plan(name, ds.get("source", "demo"), json.dumps(ds.get("demo", {}), sort_keys=True),
                 json.dumps(ds.get("split", {}), sort_keys=True), tuple(ds.get("modalities", ("t1", "t1ce", "t2", "flair"))),
                 ds.get("reference", "t1ce"), results, tuple(ds.get("exclude") or ()))
