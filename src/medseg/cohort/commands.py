"""CLI: ``medseg synth-cohort`` (the demo cohort) and ``medseg case-sheet``."""
from __future__ import annotations

import argparse


def _synth(a: argparse.Namespace) -> int:
    from medseg.cohort.synth import SynthConfig, generate_cohort

    cfg = SynthConfig.from_dict({"n_cases": a.n_cases, "seed": a.seed, "spacing_mm": (a.spacing,) * 3,
                                 "anatomy": a.anatomy, "fov_variety": a.fov_variety, "full_geometry": a.full_geometry})
    generate_cohort(cfg, a.output, workers=a.workers)
    return 0


def _sheet(a: argparse.Namespace) -> int:
    from pathlib import Path

    from medseg.cohort.listing import list_cases
    from medseg.cohort.sheet import plan_sheet

    ds = {"source": str(Path(a.input).resolve()), "convention": a.convention,
          "split": {"test_fraction": a.test_fraction, "val_fraction": a.val_fraction, "n_folds": a.folds, "seed": a.seed}}
    plan = list_cases(Path(a.input).name, ds)
    rows = plan_sheet(plan, a.output, a.task, threads=a.threads)
    return 1 if any(r["problem"] for r in rows) else 0


def register(sub: argparse._SubParsersAction) -> None:
    from medseg.cli import add_input, add_output

    from medseg.cohort.splits import SplitConfig
    from medseg.cohort.synth import SynthConfig

    demo, split = SynthConfig(), SplitConfig()
    p = sub.add_parser("synth-cohort", help="generate the demo cohort (BraTS 2021 layout + truth): the workflow demo's "
                                            "anatomy and fields of view unless told otherwise")
    add_output(p, "output folder (images/, truth/, cohort.json)", "--out")
    p.add_argument("--n-cases", type=int, default=demo.n_cases, help="number of cases")
    p.add_argument("--seed", type=int, default=demo.seed, help="generator seed")
    p.add_argument("--spacing", type=float, default=demo.spacing_mm[0], help="voxel size in mm (isotropic)")
    p.add_argument("--anatomy", default=demo.anatomy, choices=["icbm", "robex"],
                   help="head the cases are built from: robex (a real subject the atlas is not made from) or icbm "
                        "(the atlas's own anatomy: atlas-based scores are inflated)")
    p.add_argument("--fov-variety", action=argparse.BooleanOptionalAction, default=demo.fov_variety,
                   help="clinical fields of view (with neck and face, cut at the vertex, tilted)")
    p.add_argument("--full-geometry", action="store_true", help="BraTS geometry: 240x240x155 at 1 mm")
    p.add_argument("--workers", type=int, default=1, help="cases generated at a time (processes)")
    p.set_defaults(func=_synth)

    p = sub.add_parser("case-sheet", help="validate a dataset folder and write its case sheet (TSV) and task (JSON)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_input(p, "dataset folder: BraTS (2021 or 2023+), nnU-Net v2 raw, Decathlon (dataset.json), PROMISE12 or ACDC",
              legacy_positional="root")
    add_output(p, "case sheet to write (TSV)", "--out")
    p.add_argument("--task", default=None, help="also write the dataset's resolved task (JSON) here")
    p.add_argument("--convention", default="auto", choices=["auto", "2021", "2023"], help="BraTS label convention")
    p.add_argument("--test-fraction", type=float, default=split.test_fraction, help="share of labelled cases held out for testing")
    p.add_argument("--val-fraction", type=float, default=split.val_fraction, help="share of training cases validating fold 0")
    p.add_argument("--folds", type=int, default=split.n_folds, help="cross-validation folds")
    p.add_argument("--seed", type=int, default=split.seed, help="split seed")
    p.add_argument("--threads", type=int, default=1, help="cases inspected at a time")
    p.set_defaults(func=_sheet)
