"""``medseg evaluate``: score predicted label maps (files or folders) against references.

Cases are matched by id: the file name without ``.nii.gz``/``.nii`` (any letter case) and without
a trailing ``_seg`` or ``-seg``; two files of one id (``X_seg.nii`` beside ``X_seg.nii.gz``) are an
error naming both, never a choice. Folders are searched recursively, so the BraTS layout
``<case>/<case>_seg.nii.gz`` works; when a folder holds any ``*_seg``/``*-seg`` file, only
those are label maps (the scans beside them are ignored). Each file is read by its exact path
with the case sheet's checks (:func:`medseg.io.read_labels`, :func:`medseg.io.grid_differences`,
the task's labels).
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from medseg.io import InputError
from medseg.tasks.layouts.base import hidden, split_ext

log = logging.getLogger(__name__)

_SEG_SUFFIX = re.compile(r"[_-]seg$")
_NIFTI = (".nii.gz", ".nii")


def _strip_ext(path: str | Path) -> str:
    return split_ext(Path(path).name)[0]


def _is_label_map(path: Path) -> bool:
    """A NIfTI file (any letter case of ``.nii.gz``/``.nii``, as the case sheet reads them)."""
    return split_ext(path.name)[1] in _NIFTI


def case_id_from_path(path: str | Path) -> str:
    """``BraTS-GLI-00001-000-seg.nii.gz`` -> ``BraTS-GLI-00001-000``; ``case_7.nii`` -> ``case_7``."""
    return _SEG_SUFFIX.sub("", _strip_ext(path))


def find_label_maps(path: str | Path) -> dict[str, Path]:
    """Map case id -> label-map file for a file or a folder (see module doc).

    Raises:
        InputError: missing path, a folder without NIfTI files, or two files with one case id.
    """
    path = Path(path)
    if path.is_file():
        return {case_id_from_path(path): path}
    if not path.is_dir():
        raise InputError(f"{path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and _is_label_map(p) and not hidden(p.name))
    if segs := [p for p in files if _SEG_SUFFIX.search(_strip_ext(p))]:
        files = segs
    if not files:
        raise InputError(f"{path} holds no .nii.gz or .nii label maps")
    found: dict[str, Path] = {}
    for p in files:
        cid = case_id_from_path(p)
        if cid in found:
            raise InputError(f"case {cid!r} has two label maps in {path}: {found[cid]} and {p}")
        found[cid] = p
    return found


def match_cases(pred: str | Path, ref: str | Path) -> list[tuple[str, Path, Path]]:
    """Pair predictions with references by case id, as ``(case_id, pred_path, ref_path)`` sorted by id.

    Two single files are paired whatever their names (the id comes from the reference).

    Raises:
        InputError: cases present on one side only, listed by name.
    """
    preds, refs = find_label_maps(pred), find_label_maps(ref)
    if Path(pred).is_file() and Path(ref).is_file():
        (cid, ref_path), = refs.items()
        return [(cid, Path(pred), ref_path)]
    no_pred, no_ref = sorted(set(refs) - set(preds)), sorted(set(preds) - set(refs))
    if no_pred or no_ref:
        parts = ([f"{len(no_pred)} reference cases have no prediction in {pred}: {no_pred}"] if no_pred else []) + \
                ([f"{len(no_ref)} predicted cases have no reference in {ref}: {no_ref}"] if no_ref else [])
        raise InputError("; ".join(parts))
    return [(cid, preds[cid], refs[cid]) for cid in sorted(refs)]


def references_convention(refs: list) -> str:
    """The one BraTS convention of a set of reference label maps, voted by their label values
    (:func:`medseg.tasks.presets.dataset_convention`: 4 = 2021, 3 = 2023; neither: 2021)."""
    import numpy as np
    import SimpleITK as sitk

    from medseg.io import read_labels
    from medseg.tasks.presets import dataset_convention, detect_convention

    detected = {str(r): detect_convention(np.unique(sitk.GetArrayFromImage(read_labels(r))).tolist(), f"{r}: ")
                for r in refs}
    convention = dataset_convention(detected)
    log.info("BraTS label convention of the references: %s (--convention auto)", convention)
    return convention


def run_evaluate(args: argparse.Namespace) -> int:
    from medseg.tracking import provenance
    from medseg.evaluate.aggregate import aggregate, write_cases_csv
    from medseg.evaluate.plots import plot_boxplots
    from medseg.evaluate.case import evaluate_case
    from medseg.io import write_json

    pairs = match_cases(args.input, args.ref)
    task = None
    if args.task:
        from medseg.cohort.sheet import read_task

        task = read_task(args.task)
    elif args.convention == "auto":
        args.convention = references_convention([r for _, _, r in pairs])
    settings = {"convention": args.convention, "lesionwise": args.lesionwise, "edition": args.edition,
                "hd_max_mm": args.hd_max_mm, "nsd_tolerance_mm": args.nsd_tolerance_mm, "hd95_method": args.hd95_method}
    log.info("evaluating %d cases (%s)", len(pairs), settings)
    results = []
    for cid, pred_path, ref_path in pairs:
        results.append(evaluate_case(pred_path, ref_path, case_id=cid, task=task, convention=args.convention,
                                     lesionwise=args.lesionwise and (task is None or bool(task.preset)),
                                     edition=args.edition, hd_max_mm=args.hd_max_mm, nsd_tolerance_mm=args.nsd_tolerance_mm,
                                     hd95_method=args.hd95_method))
    inputs = [p for _, pp, rp in pairs for p in (pp, rp)]
    summary = aggregate(results, provenance=provenance.collect(config=settings, inputs=inputs))
    write_json(summary, args.output)
    if args.csv:
        write_cases_csv(results, args.csv)
    if args.plot:
        plot_boxplots(results, args.plot)
    log.info("wrote %s", args.output)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    from medseg.evaluate.config import HD95_CHOICES, EvalConfig
    from medseg.evaluate.lesionwise import EDITIONS

    ev = EvalConfig()

    from medseg.cli import add_output

    p = subparsers.add_parser("evaluate", help="score label maps against references (BraTS metrics)", description=__doc__)
    p.add_argument("-i", "--input", "--pred", dest="input", required=True, help="predicted label map or folder of them")
    p.add_argument("-r", "--ref", required=True, help="reference label map or folder of them (BraTS layout works)")
    add_output(p, "results JSON to write (docs/results_schema.md)", "--json")
    p.add_argument("-t", "--task", default=None, help="task.json of the dataset (results/<dataset>/task.json): its labels "
                                                     "and regions are scored (none given: BraTS in --convention)")
    p.add_argument("--convention", choices=["auto", "2021", "2023"], default="auto",
                   help="BraTS label convention without --task: auto = voted by the references' label values "
                        "(4: 2021, 3: 2023), as the workflow does")
    p.add_argument("--lesionwise", action=argparse.BooleanOptionalAction, default=ev.lesionwise,
                   help="also compute BraTS 2023 lesion-wise Dice and HD95")
    p.add_argument("--edition", choices=sorted(EDITIONS), default=ev.edition, help="lesion-wise parameters")
    p.add_argument("--csv", default=None, help="also write one row per case to this CSV")
    p.add_argument("--plot", default=None, help="also write metric box plots to this PNG")
    p.add_argument("--hd-max-mm", type=float, default=ev.hd_max_mm, help="HD95/ASSD when one side is empty (mm)")
    p.add_argument("--nsd-tolerance-mm", type=float, default=ev.nsd_tolerance_mm, help="surface Dice tolerance (mm)")
    p.add_argument("--hd95-method", choices=list(HD95_CHOICES), default=ev.hd95_method,
                   help="HD95 definition (pooled: official BraTS)")
    p.set_defaults(func=run_evaluate)
