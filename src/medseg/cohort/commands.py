"""CLI: ``medseg synth-cohort`` (the demo cohort) and ``medseg case-sheet``."""
from __future__ import annotations

import argparse


def _synth(a: argparse.Namespace) -> int:
    from medseg.cohort.synth import SynthConfig, generate_cohort

    cfg = SynthConfig(n_cases=a.n_cases, seed=a.seed, spacing_mm=(a.spacing,) * 3)
    if a.full_geometry:
        cfg = SynthConfig.from_dict({"n_cases": a.n_cases, "seed": a.seed, "full_geometry": True})
    generate_cohort(cfg, a.out, workers=a.workers)
    return 0


def _sheet(a: argparse.Namespace) -> int:
    from medseg.cohort.layout import detect_layout, list_cases
    from medseg.cohort.sheet import build_case_sheet
    from medseg.cohort.splits import assign_splits

    layout = detect_layout(a.root)
    cases = list_cases(a.root, layout)
    splits = assign_splits(cases, a.test_fraction, a.folds, a.val_fraction, a.seed)
    rows = build_case_sheet(a.root, layout, cases, splits, ("t1", "t1ce", "t2", "flair"), a.convention, a.out)
    return 1 if any(r["problem"] for r in rows) else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth-cohort", help="generate the demo cohort (BraTS 2021 layout + truth)")
    p.add_argument("--out", required=True, help="output folder (images/, truth/, cohort.json)")
    p.add_argument("--n-cases", type=int, default=16)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (isotropic)")
    p.add_argument("--full-geometry", action="store_true", help="BraTS geometry: 240x240x155 at 1 mm")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_synth)

    p = sub.add_parser("case-sheet", help="validate a BraTS folder and write its case sheet (TSV)")
    p.add_argument("root", help="BraTS folder (2021 or 2023+ layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--convention", default="auto", choices=["auto", "2021", "2023"])
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--folds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_sheet)
