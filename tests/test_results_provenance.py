"""Self-explaining results: model facts read from model.pt without torch, splits and scan checksums
from the case sheet, the rounded CSV with split and model columns."""
from __future__ import annotations

import csv
import hashlib
import json

import pytest

from medseg.evaluate.report import ResultsFiles, ResultsRequest, write_results
from medseg.tracking.provenance import model_facts


def _save_model(path, torch):
    """A model.pt as medseg.training.loop writes it: weights (with BatchNorm buffers) and the model config."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.Conv2d(5, 2, 1))
    torch.save({"state_dict": net.state_dict(), "meta": {"model_config": {"arch": "unet", "encoder": "tiny"}}}, path)
    return sum(p.numel() for p in net.parameters())


def test_model_facts_match_torch(tmp_path):
    torch = pytest.importorskip("torch")
    n = _save_model(tmp_path / "model.pt", torch)
    facts = model_facts(tmp_path / "model.pt")
    assert facts["n_parameters"] == n == 3 * 5 * 9 + 5 + 5 + 5 + 5 * 2 + 2
    assert (facts["arch"], facts["encoder"]) == ("unet", "tiny")
    assert facts["sha256"] == hashlib.sha256((tmp_path / "model.pt").read_bytes()).hexdigest()


def test_results_name_split_model_config_and_scans(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    _save_model(tmp_path / "model.pt", torch)
    for c in ("a", "b", "t"):
        (tmp_path / f"{c}_t1.nii.gz").write_bytes(c.encode())
    rows = [("a", "test", ""), ("b", "test", ""), ("t", "train", "0")]
    with open("cases.tsv", "w") as f:
        f.write("case_id\tsplit\tfold\tlabelled\tconvention\tproblem\tt1\tseg\n")
        f.writelines(f"{c}\t{s}\t{k}\ttrue\t2021\t\t{c}_t1.nii.gz\t\n" for c, s, k in rows)
    metrics = []
    for c, dice in (("a", 0.123456789), ("b", 0.5)):
        metrics.append(tmp_path / f"{c}.json")
        metrics[-1].write_text(json.dumps({"case": c, "regions": {"WT": {"dice": dice, "hd95": 12.3456789, "assd": 1.0, "nsd": 0.9,
                                                                        "edge_case": "none"}}}))
    config = {"models": {"m": {"encoder": "tiny"}}, "training": {"steps": 3}}
    qc = []  # preprocessing gates that only warned (qc_action: warn) reach the results JSON, per case
    for c, warn in (("a", ["brain_volume: brain mask volume 2600 mL is outside ..."]), ("b", [])):
        (tmp_path / "preprocess" / c).mkdir(parents=True)
        qc.append(tmp_path / "preprocess" / c / "skullstrip_qc.json")
        qc[-1].write_text(json.dumps({"brain_volume_ml": 1.0, "qc_warnings": warn}))
    res = write_results(ResultsRequest(dataset="ds", model="m", metrics=metrics, config=config, model_files=["model.pt"],
                                       sheet="cases.tsv", qc_jsons=qc), ResultsFiles("r.json", "r.csv", "r.png"))
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["schema_version"] == 4 and saved["dataset"] == "ds" and saved["config"] == config
    assert saved["model"]["name"] == "m" and saved["model"]["arch"] == "unet" and saved["model"]["n_parameters"] > 0
    assert saved["model"]["folds"][0]["sha256"] == hashlib.sha256(b"" + (tmp_path / "model.pt").read_bytes()).hexdigest()
    assert saved["splits"] == {"a": {"split": "test", "fold": None}, "b": {"split": "test", "fold": None},
                               "t": {"split": "train", "fold": 0}}
    assert set(saved["source_scans"]) == {"a", "b"}  # scored cases only
    assert saved["qc_warnings"] == {"a": ["brain_volume: brain mask volume 2600 mL is outside ..."]}
    assert saved["source_scans"]["a"]["t1"] == {"file": "a_t1.nii.gz", "sha256": hashlib.sha256(b"a").hexdigest()}
    assert saved["regions"]["WT"]["dice"]["values"]["a"] == 0.123456789 and res["n_cases"] == 2  # JSON: full precision
    table = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [(r["case"], r["split"], r["model"], r["WT_dice"], r["WT_hd95"]) for r in table] == [
        ("a", "test", "m", "0.1235", "12.3457"), ("b", "test", "m", "0.5", "12.3457")]
