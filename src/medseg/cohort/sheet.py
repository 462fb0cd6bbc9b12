"""The validated case sheet (``cases.tsv``): one row per case with files, split, fold, convention.

Problems found here (missing or unreadable files, bad labels) are recorded in the row's
``problem`` column rather than raised, so the bad case fails its own jobs with that message
and every other case goes on.
"""
from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.cohort.layout import case_file, check_case_id
from medseg.io import InputError, atomic_path
from medseg.labels import ConventionError, detect_convention, validate_labels

log = logging.getLogger(__name__)

COLUMNS = ("case_id", "split", "fold", "convention", "problem", "t1", "t1ce", "t2", "flair", "seg")


def inspect_case(root: str | Path, case: str, layout: str, modalities: Sequence[str], convention: str) -> dict:
    """Check one case's files (headers, grids, labels); return its sheet row."""
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
        values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(paths["seg"]))))
        detected = detect_convention(values)
        if convention == "auto":
            row["convention"] = detected or "2021"
        else:
            validate_labels(values, convention, where=f"{paths['seg'].name}: ")
            row["convention"] = convention
        if detected is None and len(values) <= 1:
            log.warning("case %s: label map %s is empty (no tumour)", case, paths["seg"].name)
    except (InputError, ConventionError, RuntimeError) as e:
        row["problem"] = f"case {case}: {e}".replace("\t", " ").replace("\n", " ")
        row.setdefault("convention", convention if convention != "auto" else "2021")
        log.error("%s", row["problem"])
    return row


def _header(path: Path, case: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(size, spacing) from the file header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"{path.name} cannot be read (corrupt or truncated?)") from e
    if reader.GetDimension() != 3:
        raise InputError(f"{path.name} is {reader.GetDimension()}-D with size {reader.GetSize()}, expected 3-D")
    return reader.GetSize(), reader.GetSpacing()


def build_case_sheet(root: str | Path, layout: str, cases: Sequence[str], splits: dict[str, dict],
                     modalities: Sequence[str], convention: str, out_tsv: str | Path) -> list[dict]:
    """Inspect every case and write the sheet atomically; return the rows."""
    rows = []
    for case in cases:
        row = inspect_case(root, case, layout, modalities, convention)
        row.update(split=splits[case]["split"], fold="" if splits[case]["fold"] is None else splits[case]["fold"])
        rows.append(row)
    with atomic_path(out_tsv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, delimiter="\t", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    n_bad = sum(bool(r["problem"]) for r in rows)
    log.info("case sheet: %d cases, %d with problems -> %s", len(rows), n_bad, out_tsv)
    training = [r["case_id"] for r in rows if r["problem"] and r["split"] == "train"]
    if training:
        log.error("training case(s) %s have problems: every fold they are in cannot train until their files are "
                  "fixed or they are listed under datasets.<name>.exclude (the other cases' preprocessing goes on "
                  "with --keep-going)", training)
    return rows


def read_case_sheet(path: str | Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f, delimiter="\t")}


def case_row(sheet_tsv: str | Path, case: str) -> dict:
    """The sheet row of ``case``; raises InputError with the recorded problem if it has one."""
    rows = read_case_sheet(sheet_tsv)
    if case not in rows:
        raise InputError(f"case {case!r} is not in the case sheet {sheet_tsv}")
    if rows[case]["problem"]:
        raise InputError(f"{rows[case]['problem']} -- fix the file(s), or leave the case out with "
                         "datasets.<name>.exclude in the config")
    return rows[case]
