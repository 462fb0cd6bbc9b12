"""Shared fixtures: a tiny demo cohort generated once per session (real anatomy, known truth)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MEDSEG_TRACKING", "0")  # unit tests do not spool MLflow runs unless they ask to

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_cohort(tmp_path_factory) -> Path:
    """Three demo cases at 3 mm (one per orientation) with their truth folders."""
    from medseg.cohort.synth import SynthConfig, generate_cohort

    out = tmp_path_factory.mktemp("demo")
    cfg = SynthConfig(n_cases=3, seed=3, spacing_mm=(3.0, 3.0, 3.0), orientations=("LPS", "RAS", "LSA"),
                      anatomy="icbm", fov_variety=False)
    generate_cohort(cfg, out, workers=1)
    return out


@pytest.fixture(scope="session")
def demo_case(demo_cohort) -> dict:
    """Paths of the first demo case: images per modality, seg, truth folder."""
    case = "BraTS2021_00000"
    d = demo_cohort / "images" / case
    return {"case": case, **{m: d / f"{case}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg")},
            "truth": demo_cohort / "truth" / case}
