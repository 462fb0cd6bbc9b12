"""The slide branch through Snakemake: dry run, and a tiny end-to-end run whose checkpoint then
predicts a slide through ``medseg stitch-slide --predictor model.pt``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

TINY = {"datasets": {"slides": {"kind": "slide",
    "source": "demo", "classes": ["skin", "colon"],
    "demo": {"n_slides": 4, "size": 1024, "seed": 0, "cmu": "none"},
    "split": {"test_fraction": 0.25, "val_fraction": 0.34, "seed": 0},
    "tiles": {"mpp": 1.0, "tile": 128, "per_class": 4},
    "training": {"steps": 4, "batch_size": 4, "patch_size": [64, 64], "val_every": 4, "checkpoint_every": 4},
    "predict": {"tile": 256, "overlap": 0.25, "mode": "gaussian", "batch_size": 4},
    "evaluation": {"mpp": 2.0}}}}


def smk(workdir: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    extra = workdir / "slides_tiny.yaml"
    extra.write_text(yaml.safe_dump(TINY))
    cfg = ["--configfile", str(REPO / "config.yaml"), str(REPO / "tests/configs/tiny.yaml"), str(extra)]
    cmd = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *cfg, *args]
    env = {**os.environ, "MEDSEG_TRACKING": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_slide_dry_run(tmp_path):
    r = smk(tmp_path, "-n", "results/slides_timm.json", "--quiet", "rules")
    assert r.returncode == 0, r.stdout + r.stderr
    for rule in ("slides_demo", "slides_sheet", "slides_stain", "slides_tiles", "train_model", "slides_predict",
                 "slides_evaluate", "slides_aggregate", "write_plan"):
        assert rule in r.stdout, rule


@pytest.mark.slow
def test_slide_workflow_end_to_end_and_stitch_slide_with_its_checkpoint(tmp_path):
    r = smk(tmp_path, "--cores", "2", "--show-failed-logs", "results/slides_timm.json")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    res = json.loads((tmp_path / "results/slides_timm.json").read_text())
    assert set(res["labels"]) == {"skin", "colon"} and res["n_cases"] == 1
    assert 0 <= res["labels"]["skin"]["dice"]["mean"] <= 1 and 0 <= res["slides"]["pixel_accuracy"]["mean"] <= 1
    test_slide = res["cases"][0]
    pred = tmp_path / f"results/slides/predictions/timm/{test_slide}"
    assert (pred / "probabilities.ome.tif").exists() and (pred / "predictions.geojson").exists()
    model = tmp_path / "results/slides/models/timm/fold_0/model.pt"
    assert (model.parent / "stain.json").exists()
    out = tmp_path / "cli"
    cli = subprocess.run([sys.executable, "-m", "medseg.cli", "stitch-slide",
                          str(tmp_path / f"results/slides/demo/slides/{test_slide}.tif"), "--predictor", str(model),
                          "--mpp", "1.0", "--tile", "256", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert cli.returncode == 0, cli.stderr[-3000:]
    features = json.loads((out / "predictions.geojson").read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in features} <= {"skin", "colon"}
