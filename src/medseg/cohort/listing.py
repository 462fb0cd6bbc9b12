"""What the DAG needs to know about a dataset at build time: its task, case files, splits, folds.

Only folder listings and ``dataset.json``, never image reads, so building the DAG of a
1,000-case dataset is cheap. Labelled cases are split into training (folds) and held-out test
cases, the cases of one patient together (an ACDC patient's ED and ES frames); unlabelled
cases (``imagesTs``, BraTS folders without a label map) are predicted only.
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
from medseg.tasks.layouts.base import GROUP_KEY, CaseFiles, Discovery
from medseg.tasks.layouts import detect_layout, discover
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

    def native_grid(self, modality: str) -> tuple | None:
        """``(size, spacing, direction)`` (x, y, z; mm) of the first readable case's ``modality`` scan,
        from its header: the dataset's grid, approximately (for the plan's window check,
        :func:`medseg.plan.runs.working_grid`); None when no case can be read yet (a demo not generated)."""
        from medseg.cohort.sources import header
        from medseg.io import InputError

        for case in self.cases[:3]:
            f = self.files[case]
            try:
                g = header(f.images[modality], case, f.channels.get(modality))
            except (InputError, OSError, KeyError, RuntimeError):
                continue
            return g.size, g.spacing, g.direction
        return None


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
    _check_region_labels(name, ds, found, labels, regions)
    return Task(name, mods, dict(labels), {r: tuple(m) for r, m in regions.items()}, None, recipe), ""


def _check_region_labels(name: str, ds: dict, found: Discovery, labels: Mapping, regions: Mapping) -> None:
    """Every region names labels of the task; the error says where each came from (the config key
    or the folder's ``dataset.json``), so that it blames what the user wrote."""
    meta = f"{found.root}/dataset.json"
    for region, members in regions.items():
        unknown = [m for m in members if m not in labels]
        if not unknown:
            continue
        labels_from = f"datasets.{name}.labels" if ds.get("labels") else f"{meta} 'labels'"
        close = {u: next((lab for lab in labels if lab.lower() == str(u).lower()), None) for u in unknown}
        hint = "; ".join(f"did you mean {c!r} for {u!r}?" for u, c in close.items() if c)
        hint = f" ({hint})" if hint else ""
        if ds.get("regions") is not None:
            raise ValueError(f"datasets.{name}.regions.{region} names {', '.join(map(repr, unknown))}, but the labels "
                             f"come from {labels_from}: {list(labels)}{hint}; spell them as {labels_from} does")
        raise ValueError(f"region {region!r} of {meta} names {', '.join(map(repr, unknown))}, which "
                         f"datasets.{name}.labels {list(labels)} spells otherwise{hint}; spell the labels as {meta} "
                         f"does, or set datasets.{name}.regions too (regions: {{}} trains on the labels)")


@functools.lru_cache(maxsize=16)
def _plan(name: str, ds_json: str, results: str) -> CaseListing:
    ds = json.loads(ds_json)
    source = ds.get("source", "demo")
    if source == "demo":
        found, defaults = demo_discovery(name, ds.get("demo") or {}, results)
    else:
        root = str(Path(source).expanduser())
        found, defaults = discover(root, **_layout_options(name, ds, detect_layout(root))), {}
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
    labelled = {c: f for c, f in found.cases.items() if f.seg is not None}
    splits = _group_splits(labelled, split)
    splits.update({c: {"split": PREDICT, "fold": None} for c, f in found.cases.items() if f.seg is None})
    splits = dict(sorted(splits.items()))
    # excluded cases are dropped after splitting: every other case keeps its split and fold
    full = CaseListing(name, source == "demo", found.root, found.layout, task, convention, dict(found.cases), splits,
                       n_folds, dict(found.problems), tuple(found.ignored))
    return full.without({c: f"datasets.{name}.exclude" for c in sorted(exclude)})


def _layout_options(name: str, ds: dict, layout: str) -> dict:
    """Keyword options of the layout's discovery: ``datasets.<name>.cine_frames`` (ACDC only)."""
    if not ds.get("cine_frames"):
        return {}
    if layout != "acdc":
        raise ValueError(f"datasets.{name}.cine_frames predicts the frames of ACDC 4-D cines, but {ds['source']} is "
                         f"a {layout} folder; remove the key")
    return {"cine_frames": True}


def _group_splits(labelled: Mapping[str, CaseFiles], split: SplitConfig) -> dict[str, dict]:
    """Splits drawn per group (:data:`~medseg.tasks.layouts.base.GROUP_KEY`, an ACDC patient's ED and ES
    frames), each case taking its group's split and fold; cases without a group are their own."""
    groups = {c: f.meta.get(GROUP_KEY, c) for c, f in labelled.items()}
    drawn = assign_splits(sorted(set(groups.values())), split.test_fraction, split.n_folds, split.val_fraction,
                          split.seed)
    return {c: dict(drawn[g]) for c, g in groups.items()}


def list_cases(name: str, ds: dict, results: str = "results") -> CaseListing:
    """Plan for config ``datasets.<name>`` (cached per settings)."""
    return _plan(name, json.dumps(ds, sort_keys=True, default=str), results)
