"""The embedded demo cohorts (``datasets.<name>.source: demo``): which kind, the files it will
hold (known before it is generated: the generators are deterministic), and its generation."""
from __future__ import annotations

from pathlib import Path

from medseg.tasks.layouts.base import CaseFiles, Discovery
from medseg.tasks.presets import BRATS_MODALITIES

KINDS = ("brats", "tissue")


def demo_discovery(name: str, demo: dict, results: str) -> tuple[Discovery, dict]:
    """The demo cohort's files under ``<results>/<name>/demo`` and its task defaults (the tissue demo
    takes the generic recipe)."""
    kind = demo.get("kind", "brats")
    root = Path(results) / name / "demo"
    if kind == "brats":
        from medseg.cohort.demo_config import SynthConfig

        cfg = SynthConfig.from_dict({k: v for k, v in demo.items() if k not in ("kind", "n_unlabelled")})
        images = root / "images"
        files = {c: CaseFiles({m: str(images / c / f"{c}_{m}.nii.gz") for m in BRATS_MODALITIES},
                              seg=str(images / c / f"{c}_seg.nii.gz")) for c in cfg.case_ids()}
        return Discovery("brats", str(images), files, convention_hint="2021"), {}
    if kind == "tissue":
        from medseg.cohort.demo_config import TissueSynthConfig

        cfg = TissueSynthConfig.from_dict({k: v for k, v in demo.items() if k != "kind"})
        return cfg.discovery(root), {"recipe": "generic"}
    raise ValueError(f"datasets.{name}.demo.kind must be one of {list(KINDS)}, got {kind!r}")


def generate_demo(demo: dict, out_dir: str | Path, workers: int = 1) -> dict:
    """Generate the demo cohort ``datasets.<name>.demo`` describes: ``kind: brats`` (four-modality
    tumours) or ``kind: tissue`` (T1 tissue classes in the Decathlon layout)."""
    demo = dict(demo)
    if demo.pop("kind", "brats") == "tissue":
        from medseg.cohort.synth_tissue import TissueSynthConfig, generate_tissue_cohort

        return generate_tissue_cohort(TissueSynthConfig.from_dict(demo), out_dir, workers=workers)
    from medseg.cohort.synth import SynthConfig, generate_cohort

    demo.pop("n_unlabelled", None)  # a tissue-demo setting
    return generate_cohort(SynthConfig.from_dict(demo), out_dir, workers=workers)
