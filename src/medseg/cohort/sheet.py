"""The validated case sheet (``cases.tsv``) and the dataset's resolved task (``task.json``).

One row per case: split, fold, whether it is labelled, the files, and the ``problem`` found
(missing, unreadable or truncated files, 4-D images, NaN/inf voxels, modalities on different
grids, label values outside the task, a label convention other than the dataset's) or the
reason discovery could not use it (split ``excluded``). With ``datasets.<name>.bad_cases:
skip`` (the default) the workflow leaves a case with a problem out of training and evaluation,
listed under ``excluded_cases`` in the results JSON; with ``fail`` it stays in and fails its own
jobs with that message. Either way every other case goes on.

BraTS datasets have one label convention: the configured one, or the one the label maps show
(:func:`medseg.tasks.presets.dataset_convention`); cases whose labels fit both (no ET) take it.
The resolved task (label values included) is written to ``task.json``, which every later job
reads.
"""
from __future__ import annotations

import csv

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.config import with_options
from medseg.io import InputError, atomic_path, read_json, write_json
from medseg.io import thread_map
from medseg.tasks.definition import LabelError, Task
from medseg.tasks.layouts.base import CaseFiles
from medseg.tasks.presets import brats_task, convention_mismatch, dataset_convention, detect_convention

log = logging.getLogger(__name__)

EXCLUDED = "excluded"


def columns(modalities: Sequence[str], meta: Sequence[str] = ()) -> tuple[str, ...]:
    """The sheet's columns; ``meta``: the layout's case metadata (ACDC: patient, phase, group ...)."""
    return ("case_id", "split", "fold", "labelled", "convention", "problem", *modalities, "seg", *meta)


def inspect_case(case: str, files: CaseFiles, modalities: Sequence[str], full: bool = True,
                 same_space: bool = False) -> tuple[dict, np.ndarray | None]:
    """Check one case's files; return its sheet row and its label values (``None``: unlabelled or a problem).

    The checks are :func:`medseg.cohort.sources.check_case`'s, the same ``medseg predict`` makes.
    ``full`` reads every voxel of every scan, as the jobs will: a gzip stream truncated after an
    intact header and NaN/inf voxels are then found here, before any job of the case runs.
    Label maps are always read whole. ``same_space``: the files must also share origin and
    direction (no registration will align them).
    """
    from medseg.cohort.sources import check_case  # SimpleITK: not when the workflow loads (sheet_problems)

    row: dict = {"case_id": case, "problem": "", "labelled": str(files.seg is not None).lower(),
                 **{m: files.images[m] for m in modalities}, "seg": files.seg or "", **files.meta}
    try:
        values = check_case(case, files, modalities, full, same_space)
    except InputError as e:
        row["problem"] = _one_line(str(e))
        log.error("%s", row["problem"])
        values = None
    return row, values


def _one_line(msg: str) -> str:
    return msg.replace("\t", " ").replace("\n", " ")


def resolve_task(task: Task, convention: str, rows: Sequence[dict], values: Mapping[str, np.ndarray],
                 layout_hint: str | None = None) -> Task:
    """The dataset's task with its label values settled; cases whose labels do not fit get a problem.

    BraTS (``task.preset``): one convention for the dataset (configured, or voted by the label
    maps); other tasks: every value must be one of the task's labels.
    """
    by_case = {r["case_id"]: r for r in rows}
    if task.preset and task.preset.startswith("brats"):
        detected = {}
        for c, v in values.items():
            try:
                detected[c] = detect_convention(v)
            except LabelError:
                detected[c] = None
        conv = dataset_convention({c: d for c, d in detected.items() if d}, convention, layout_hint)
        task = brats_task(task.name, conv, task.modalities, task.recipe)
        for c, v in values.items():
            why = convention_mismatch(v, conv, f"file {by_case[c]['seg']}: ")
            if why:
                by_case[c]["problem"] = _one_line(f"case {c}: {why}")
        for r in rows:
            r["convention"] = conv
    else:
        for c, v in values.items():
            try:
                task.check_values(v, f"case {c}, file {by_case[c]['seg']}: ")
            except LabelError as e:
                by_case[c]["problem"] = _one_line(str(e))
    for c in values:
        if by_case[c]["problem"]:
            log.error("%s", by_case[c]["problem"])
    return task


BAD_CASES = ("skip", "fail")


@dataclass(frozen=True)
class SheetSettings:
    """How a case sheet is built (``datasets.<name>`` keys ``convention``, ``validate``, ``bad_cases``).

    Attributes:
        convention: BraTS label convention of the dataset, ``"2021"``, ``"2023"`` or ``"auto"`` (voted
            by the label maps; :func:`medseg.tasks.presets.dataset_convention`).
        layout_hint: the layout's own BraTS edition, the tie-breaker of ``auto``.
        full: read every voxel of every scan (``validate: full``), not only the headers.
        same_space: the modalities must share origin and direction (no registration aligns them).
        bad_cases: ``skip`` or ``fail``; only changes what the log says will happen to a case with a problem.
        threads: cases inspected at a time.
    """

    convention: str = "auto"
    layout_hint: str | None = None
    full: bool = True
    same_space: bool = False
    bad_cases: str = "skip"
    threads: int = 1

    def __post_init__(self) -> None:
        if self.bad_cases not in BAD_CASES:
            raise ValueError(f"bad_cases must be one of {list(BAD_CASES)}, got {self.bad_cases!r}")


def build_case_sheet(task: Task, files: Mapping[str, CaseFiles], splits: Mapping[str, dict], out_tsv: str | Path,
                     out_task: str | Path | None = None, *, excluded: Mapping[str, str] | None = None,
                     settings: SheetSettings | None = None, **options) -> list[dict]:
    """Inspect every case (``settings.threads`` at a time), settle the task, write the sheet (and ``task.json``).

    ``files``/``splits``: the cases to inspect (a dataset plan's). ``excluded``: cases discovery
    or the config left out (case -> reason), written as rows of split ``excluded``. ``settings``:
    :class:`SheetSettings` (default: its defaults); ``**options``: its fields overriding it
    (``threads=4``, ...; an unknown name raises ``ValueError`` listing the valid ones).
    """
    settings = with_options(SheetSettings() if settings is None else settings, options, "build_case_sheet")
    mods = list(task.modalities)

    def one(case: str) -> tuple[dict, np.ndarray | None]:
        row, values = inspect_case(case, files[case], mods, settings.full, settings.same_space)
        row.update(split=splits[case]["split"], fold="" if splits[case]["fold"] is None else splits[case]["fold"])
        return row, values

    results = thread_map(one, list(splits), settings.threads, "case sheet", "case")
    rows = [r for r, _ in results]
    values = {r["case_id"]: v for r, v in results if v is not None and not r["problem"]}
    task = resolve_task(task, settings.convention, rows, values, settings.layout_hint)
    for r in rows:
        r.setdefault("convention", "")
    rows += [{"case_id": c, "split": EXCLUDED, "fold": "", "labelled": "", "convention": "", "problem": _one_line(why)}
             for c, why in sorted((excluded or {}).items())]
    with atomic_path(out_tsv) as tmp:  # object dtype: ints stay ints; a missing value is an empty cell
        import pandas as pd  # writing only: reading the sheet (every DAG load) stays light

        meta = list(dict.fromkeys(k for c in splits for k in files[c].meta))
        pd.DataFrame(rows, columns=columns(mods, meta), dtype=object).to_csv(tmp, sep="\t", index=False, na_rep="")
    if out_task is not None:
        write_json(task.to_dict(), out_task)
    _log_problems(rows, len(excluded or {}), out_tsv, settings.bad_cases)
    return rows


def _log_problems(rows: Sequence[dict], n_excluded: int, out_tsv: str | Path, bad_cases: str) -> None:
    """Log the sheet's counts and what will happen to the cases with a problem under ``bad_cases``."""
    bad = [r["case_id"] for r in rows if r["problem"] and r["split"] != EXCLUDED]
    log.info("case sheet: %d cases, %d with problems, %d excluded before -> %s", len(rows) - n_excluded,
             len(bad), n_excluded, out_tsv)
    if bad and bad_cases == "skip":
        log.error("%d case(s) left out of training and evaluation (bad_cases: skip), listed under excluded_cases in "
                  "the results JSON: %s. Fix their files and run again to bring them back.", len(bad), bad)
    training = [r["case_id"] for r in rows if r["problem"] and r["split"] == "train"]
    if training and bad_cases != "skip":
        log.error("training case(s) %s have problems: every fold they are in cannot train until their files are "
                  "fixed or they are listed under datasets.<name>.exclude (the other cases' preprocessing goes on "
                  "with --keep-going); bad_cases: skip leaves them out automatically", training)


def plan_sheet(plan, out_tsv: str | Path, out_task: str | Path | None = None, **kwargs) -> list[dict]:
    """:func:`build_case_sheet` of a :class:`~medseg.cohort.listing.CaseListing` (every planned case,
    its exclusions as ``excluded`` rows); ``kwargs``: ``full``, ``same_space``, ``bad_cases``, ``threads``."""
    hint = plan.task.preset[len("brats"):] if plan.task.preset else None
    return build_case_sheet(plan.task, plan.files, plan.splits, out_tsv, out_task, convention=plan.convention or "auto",
                            layout_hint=hint, excluded=plan.excluded, **kwargs)


def read_case_sheet(path: str | Path) -> dict[str, dict]:
    with open(path, newline="") as f:  # every cell as written, "" if empty
        return {r["case_id"]: r for r in csv.DictReader(f, delimiter="\t")}


def read_task(path: str | Path) -> Task:
    """The resolved task a case sheet job wrote (``task.json``)."""
    return Task.from_dict(read_json(path))


def sheet_problems(sheet_tsv: str | Path) -> dict[str, str]:
    """Case id -> problem for every case the sheet found unusable; {} while the sheet does not exist."""
    try:
        st = os.stat(sheet_tsv)
    except FileNotFoundError:
        return {}
    return dict(_problems(str(sheet_tsv), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=32)
def _problems(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, str], ...]:
    return tuple((c, r["problem"]) for c, r in read_case_sheet(path).items() if r["problem"] and r["split"] != EXCLUDED)


def case_row(sheet_tsv: str | Path, case: str) -> dict:
    """The sheet row of ``case``; raises InputError with the recorded problem if it has one."""
    rows = read_case_sheet(sheet_tsv)
    if case not in rows:
        raise InputError(f"case {case!r} is not in the case sheet {sheet_tsv}")
    if rows[case]["problem"]:
        raise InputError(f"{rows[case]['problem']} -- fix the file(s), or leave the case out with "
                         "datasets.<name>.exclude in the config")
    return rows[case]
