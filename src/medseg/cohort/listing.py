"""What the DAG needs to know about a dataset at build time: its task, case files, splits, folds.

Only folder listings and ``dataset.json``, never image reads, so building the DAG of a
1,000-case dataset is cheap. Labelled cases are split into training (folds) and held-out test
cases; unlabelled cases (``imagesTs``, BraTS folders without a label map) are predicted only.
Cases that discovery found unusable (missing modality, unsupported file type, empty folder,
bad id ...) are excluded from the start with their reason, as are ``datasets.<name>.exclude``.
"""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from medseg.config import build
from medseg.cohort.demos import demo_discovery
from medseg.cohort.splits import SplitConfig, assign_splits, fold_cases, held_out_cases
from medseg.tasks.definition import Task
from medseg.tasks.layouts.base import CaseFiles, Discovery
from medseg.tasks.layouts import discover
from medseg.tasks.presets import BRATS_MODALITIES, brats_task

log = logging.getLogger(__name__)

PREDICT = "predict"  # split of unlabelled cases


@dataclass(frozen=True)
class CaseListing:
    name: str
    is_demo: bool
    root: str  # folder the layout was read from
    layout: str
    task: Task  # for BraTS with convention auto: provisional labels; the case sheet writes the resolved task.json
    convention: str  # BraTS: auto | 2021 | 2023; other tasks: ""
    files: Mapping[str, CaseFiles]
    splits: dict
    n_folds: int
    excluded: Mapping[str, str] = field(default_factory=dict)  # case id -> why it was left out
    ignored: tuple[str, ...] = ()

    @property
    def cases(self) -> tuple[str, ...]:
        return tuple(self.splits)

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.task.modalities

    def without(self, problems: Mapping[str, str]) -> CaseListing:
        """This plan minus ``problems`` (case id -> reason); every other case keeps its split and fold."""
        drop = {c: r for c, r in problems.items() if c in self.splits}
        if not drop:
            return self
        return replace(self, splits={c: s for c, s in self.splits.items() if c not in drop},
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

    @functools.cached_property
    def _unlabelled(self) -> tuple[str, ...]:
        return tuple(sorted(c for c, s in self.splits.items() if s["split"] == PREDICT))

    def train_cases(self, fold: int) -> list[str]:
        return list(self._fold_lists[fold][0])

    def val_cases(self, fold: int) -> list[str]:
        return list(self._fold_lists[fold][1])

    def trained_cases(self) -> list[str]:
        """Cases that train or validate some fold (every labelled case but the held-out test cases)."""
        return list(self._trained_cases)

    def test_cases(self) -> list[str]:
        """Labelled held-out cases: predicted and scored."""
        return list(self._test_cases)

    def unlabelled_cases(self) -> list[str]:
        """Cases without a label map: predicted, not scored."""
        return list(self._unlabelled)

    def predicted_cases(self) -> list[str]:
        return sorted(self._test_cases + self._unlabelled)

    def is_test(self, case: str) -> bool:
        return self.splits[case]["split"] == "test"

    def raw(self, case: str, key: str) -> str:
        """Source file of modality ``key`` (or ``"seg"``) of ``case``."""
        f = self.files[case]
        if key == "seg":
            if f.seg is None:
                raise ValueError(f"case {case} of dataset {self.name} has no label map (an unlabelled case)")
            return f.seg
        return f.images[key]

    def channel(self, case: str, key: str) -> int | None:
        """Channel of modality ``key`` inside a 4-D source file (Decathlon), else None."""
        return self.files[case].channels.get(key)

    def raw_files(self, case: str) -> list[str]:
        return self.files[case].files()


def _task(name: str, ds: dict, found: Discovery, defaults: dict) -> tuple[Task, str]:
    """The dataset's task: the config's labels/regions/modalities, else what the folder says."""
    recipe = ds.get("recipe") or defaults.get("recipe") or ("brain" if found.layout == "brats" else "generic")
    if found.layout == "brats" or ds.get("preset") in ("brats", "brats2021", "brats2023"):
        conv = str(ds.get("convention", "auto"))
        mods = tuple(ds.get("modalities") or BRATS_MODALITIES)
        return brats_task(name, conv if conv != "auto" else (found.convention_hint or "2021"), mods, recipe), conv
    mods = tuple(ds.get("modalities") or found.modalities or ())
    if found.modalities and len(mods) != len(found.modalities):
        raise ValueError(f"datasets.{name}.modalities lists {len(mods)} modalities but {found.root}/dataset.json "
                         f"declares {len(found.modalities)}: {list(found.modalities)}")
    labels = ds.get("labels") or found.labels
    if not labels:
        raise ValueError(f"datasets.{name}.labels is not set and {found.root} does not declare its labels")
    regions = ds.get("regions") if ds.get("regions") is not None else (found.regions or {})
    return Task(name, mods, dict(labels), {r: tuple(m) for r, m in regions.items()}, None, recipe), ""


@functools.lru_cache(maxsize=16)
def _plan(name: str, ds_json: str, results: str) -> CaseListing:
    ds = json.loads(ds_json)
    source = ds.get("source", "demo")
    if source == "demo":
        found, defaults = demo_discovery(name, ds.get("demo") or {}, results)
    else:
        root = str(Path(source).expanduser())
        found, defaults = discover(root), {}
    task, convention = _task(name, ds, found, defaults)
    if found.layout == "brats" and set(task.modalities) - set(BRATS_MODALITIES):
        raise ValueError(f"datasets.{name}.modalities: a BraTS folder holds {list(BRATS_MODALITIES)}, "
                         f"got {list(task.modalities)}")
    exclude = tuple(ds.get("exclude") or ())
    known = set(found.cases) | set(found.problems)
    unknown = sorted(set(exclude) - known)
    if unknown:
        raise ValueError(f"datasets.{name}.exclude lists case(s) that are not in {found.root}: {unknown}")
    if found.problems:
        log.warning("dataset %s: %d case(s) cannot be used and are excluded: %s", name, len(found.problems),
                    "; ".join(found.problems.values()))
    if found.ignored:
        log.info("dataset %s: %d file(s) belong to no case and are not used: %s", name, len(found.ignored),
                 ", ".join(found.ignored[:20]) + (" ..." if len(found.ignored) > 20 else ""))
    split = build(SplitConfig, ds.get("split"), f"datasets.{name}.split")
    n_folds = split.n_folds
    labelled = [c for c, f in found.cases.items() if f.seg is not None]
    splits = assign_splits(labelled, split.test_fraction, n_folds, split.val_fraction, split.seed)
    splits.update({c: {"split": PREDICT, "fold": None} for c, f in found.cases.items() if f.seg is None})
    splits = dict(sorted(splits.items()))
    # excluded cases are dropped after splitting: every other case keeps its split and fold
    full = CaseListing(name, source == "demo", found.root, found.layout, task, convention, dict(found.cases), splits,
                       n_folds, dict(found.problems), tuple(found.ignored))
    return full.without({c: f"datasets.{name}.exclude" for c in sorted(exclude)})


def list_cases(name: str, ds: dict, results: str = "results") -> CaseListing:
    """Plan for config ``datasets.<name>`` (cached per settings)."""
    return _plan(name, json.dumps(ds, sort_keys=True, default=str), results)
