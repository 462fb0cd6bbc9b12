"""The validated case sheet (``cases.tsv``): one row per case with files, split, fold, convention.

Problems found here (missing, unreadable or truncated files, 4-D images, NaN/inf voxels,
modalities on different grids, bad labels) are recorded in the row's ``problem`` column rather
than raised. With ``datasets.<name>.bad_cases: skip`` (the default) the workflow then leaves
the case out of training and evaluation, listed with its problem under ``excluded_cases`` in
the results JSON; with ``fail`` the case stays in and fails its own jobs with that message.
Either way every other case goes on.
"""
from __future__ import annotations

import csv
import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.cohort.layout import case_file, check_case_id
from medseg.io import InputError, atomic_path, read_image
from medseg.labels import ConventionError, detect_convention, validate_labels
from medseg.parallel import thread_map

log = logging.getLogger(__name__)

COLUMNS = ("case_id", "split", "fold", "convention", "problem", "t1", "t1ce", "t2", "flair", "seg")


def inspect_case(root: str | Path, case: str, layout: str, modalities: Sequence[str], convention: str,
                 full: bool = True, same_space: bool = False) -> dict:
    """Check one case's files (headers, grids, labels; with ``full`` also every voxel); return its sheet row.

    ``full`` reads each image whole, as the jobs will: a gzip stream truncated after an intact
    header and NaN/inf voxels are then found here, before any job of the case runs.
    ``same_space``: the files must also share origin and direction (no registration will align them).
    """
    row: dict = {"case_id": case, "problem": ""}
    try:
        check_case_id(case)
        paths = {k: case_file(root, case, k, layout) for k in (*modalities, "seg")}
        row.update({k: str(v) for k, v in paths.items()})
        missing = [f"{k} ({p.name})" for k, p in paths.items() if not p.exists()]
        if missing:
            raise InputError(f"missing {', '.join(missing)} in {Path(root) / case}")
        ref = _header(paths[modalities[0]], case)
        for k in (*modalities[1:], "seg"):
            other = _header(paths[k], case)
            if other[0] != ref[0] or not np.allclose(other[1], ref[1], atol=1e-3):
                raise InputError(f"{paths[k].name} has grid {other[0]} @ {other[1]} mm but "
                                 f"{paths[modalities[0]].name} has {ref[0]} @ {ref[1]} mm; "
                                 "resample all modalities of a case onto one grid")
            if same_space and not (np.allclose(other[2], ref[2], atol=1e-2) and np.allclose(other[3], ref[3], atol=1e-4)):
                raise InputError(f"{paths[k].name} has origin {_r(other[2])} and direction {_r(other[3])} but "
                                 f"{paths[modalities[0]].name} has {_r(ref[2])} and {_r(ref[3])}: with "
                                 "steps.register off the modalities are stacked voxel by voxel, so they must share "
                                 "one space; turn steps.register on, or resample them onto one grid")
        if full:
            for k in modalities:
                read_image(paths[k], case=case, source=True)
        seg = read_image(paths["seg"], case=case, source=full) if full else sitk.ReadImage(str(paths["seg"]))
        values = np.unique(sitk.GetArrayViewFromImage(seg))
        detected = detect_convention(values)
        if convention == "auto":
            row["convention"] = detected or "2021"
        else:
            validate_labels(values, convention, where=f"{paths['seg'].name}: ")
            row["convention"] = convention
        if detected is None and len(values) <= 1:
            log.warning("case %s: label map %s is empty (no tumour)", case, paths["seg"].name)
    except (InputError, ConventionError, RuntimeError) as e:
        msg = str(e) if f"case {case!r}" in str(e) else f"case {case}: {e}"  # read_image names the case itself
        row["problem"] = msg.replace("\t", " ").replace("\n", " ")
        row.setdefault("convention", convention if convention != "auto" else "2021")
        log.error("%s", row["problem"])
    return row


def _r(values: Sequence[float]) -> list[float]:
    return [round(v, 3) for v in values]


def _header(path: Path, case: str) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(size, spacing, origin, direction) from the file header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"{path.name} cannot be read (corrupt or truncated?)") from e
    if reader.GetDimension() != 3:
        raise InputError(f"{path.name} is {reader.GetDimension()}-D with size {reader.GetSize()}, expected 3-D")
    return reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def build_case_sheet(root: str | Path, layout: str, cases: Sequence[str], splits: dict[str, dict],
                     modalities: Sequence[str], convention: str, out_tsv: str | Path, *, full: bool = True,
                     same_space: bool = False, bad_cases: str = "skip", threads: int = 1) -> list[dict]:
    """Inspect every case (``threads`` at a time) and write the sheet atomically; return the rows.

    ``full``, ``same_space``: see :func:`inspect_case`.
    ``bad_cases`` only changes what the log says will happen to a case with a problem
    (``skip``: left out; ``fail``: its jobs fail).
    """
    def one(case: str) -> dict:
        row = inspect_case(root, case, layout, modalities, convention, full, same_space)
        row.update(split=splits[case]["split"], fold="" if splits[case]["fold"] is None else splits[case]["fold"])
        return row

    rows = thread_map(one, cases, threads, "case sheet", "case")
    with atomic_path(out_tsv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, delimiter="\t", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    n_bad = sum(bool(r["problem"]) for r in rows)
    log.info("case sheet: %d cases, %d with problems -> %s", len(rows), n_bad, out_tsv)
    bad = [r["case_id"] for r in rows if r["problem"]]
    if bad and bad_cases == "skip":
        log.error("%d case(s) left out of training and evaluation (bad_cases: skip), listed under excluded_cases in "
                  "the results JSON: %s. Fix their files and run again to bring them back.", len(bad), bad)
    training = [r["case_id"] for r in rows if r["problem"] and r["split"] == "train"]
    if training and bad_cases != "skip":
        log.error("training case(s) %s have problems: every fold they are in cannot train until their files are "
                  "fixed or they are listed under datasets.<name>.exclude (the other cases' preprocessing goes on "
                  "with --keep-going); bad_cases: skip leaves them out automatically", training)
    return rows


def read_case_sheet(path: str | Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f, delimiter="\t")}


def sheet_problems(sheet_tsv: str | Path) -> dict[str, str]:
    """Case id -> problem for every case the sheet found unusable; {} while the sheet does not exist."""
    try:
        st = os.stat(sheet_tsv)
    except FileNotFoundError:
        return {}
    return dict(_problems(str(sheet_tsv), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=32)
def _problems(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, str], ...]:
    return tuple((c, r["problem"]) for c, r in read_case_sheet(path).items() if r["problem"])


def case_row(sheet_tsv: str | Path, case: str) -> dict:
    """The sheet row of ``case``; raises InputError with the recorded problem if it has one."""
    rows = read_case_sheet(sheet_tsv)
    if case not in rows:
        raise InputError(f"case {case!r} is not in the case sheet {sheet_tsv}")
    if rows[case]["problem"]:
        raise InputError(f"{rows[case]['problem']} -- fix the file(s), or leave the case out with "
                         "datasets.<name>.exclude in the config")
    return rows[case]
