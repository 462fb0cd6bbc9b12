"""EDPCNN in the workflow: train() on tiles, resume, model.pt -> load_model -> predict_volume / predict_case."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn as nn

from medseg.inference.edpcnn import mask_to_probs, object_channel, object_mask, object_name
from medseg.io import write_json
from medseg.models import build_model, model_config_from_mapping, with_io_channels
from medseg.models.edpcnn import EDPCNN
from medseg.models.checkpoint import load_model
from medseg.plan.runs import resolve_run
from medseg.preprocess.case import CaseFolder, CaseJob
from medseg.preprocess.config import NativeStage
from medseg.tasks.definition import Task
from medseg.tasks.presets import brats_task
from medseg.training.config import FoldJob
from medseg.training.loop import train
from medseg.inference.config import InferenceConfig
from medseg.inference.volume import predict_volume

TASK = brats_task("brats", "2021")  # regions WT, TC, ET; WT paints ED (2)
# a task whose regions are declared smallest first (ET, TC, WT): the object is still WT
SORTED = Task("brats", TASK.modalities, dict(TASK.labels), {r: TASK.regions[r] for r in ("ET", "TC", "WT")},
              TASK.preset)
EDP = {"arch": "edpcnn", "encoder": "resnet10t", "decoder_channels": [16, 16, 8, 8, 8], "n_rays": 12, "n_points": 10,
       "radius_px": 10.0, "sg_steps": 2, "noise_samples": 2, "sg_base_channels": 4, "lr": 1e-3, "sg_lr": 1e-3}
TRAINING = {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "val_every": 2, "threads": 1, "device": "cpu", "context": 1}
RUN = resolve_run({"models": {"edpcnn": EDP}, "training": TRAINING, "inference": {"device": "cpu"}}, "edpcnn")
ICFG = InferenceConfig(device="cpu")


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_tiles(folder, task, n=3, shape=(6, 28, 24)):
    """Tiles of ``n`` cases (targets in ``task``'s region order): WT a disc on slices 2-4 (ED, with
    NCR and ET inside it), brighter in every modality."""
    rng = np.random.default_rng(0)
    npys, jsons = [], []
    for i in range(n):
        img = rng.normal(0, 1, (4, *shape)).astype(np.float32)
        labels = np.zeros(shape, np.uint8)
        labels[2:5][:, _disc(*shape[1:], 13 + i, 11, 6)] = 2
        labels[2:5][:, _disc(*shape[1:], 13 + i, 11, 3)] = 1
        labels[3][_disc(*shape[1:], 13 + i, 11, 2)] = 4
        lab = task.encode(labels).astype(np.float32)
        img[:, labels > 0] += 2.0
        arr = np.concatenate([img, lab]).astype(np.float16)
        np.save(folder / f"c{i}.npy", arr)
        write_json({"case": f"c{i}", "shape": list(arr.shape), "n_image_channels": 4,
                    "brain_slices": list(range(shape[0])), "fg_slices": [2, 3, 4]}, folder / f"c{i}.json")
        npys.append(str(folder / f"c{i}.npy"))
        jsons.append(str(folder / f"c{i}.json"))
    return npys, jsons


def test_object_is_the_largest_region_whatever_the_region_order():
    assert object_name(TASK) == object_name(SORTED) == "WT"
    assert object_channel(TASK) == 0 and object_channel(SORTED) == 2 and list(SORTED.regions)[2] == "WT"
    tissue = Task("tissue", ("t1",), {"csf": 1, "gm": 2, "wm": 3})
    assert object_name(tissue) == "foreground" and object_channel(tissue) == 1


def test_edpcnn_trains_through_train_resumes_exactly_and_predicts_wt_only(tmp_path):
    """On a task with regions ET, TC, WT: trains on WT, predicts into channel 2."""
    TASK = SORTED  # noqa: N806
    npys, _ = make_tiles(tmp_path, TASK)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    job = FoldJob(tuple(npys[:2]), tuple(npys[2:]), str(straight), TASK)  # slice tables: the .json beside each
    # EDPCNN sees whole slices: no window, constant blending (nothing overlaps); its own trainer (Algorithm 2)
    assert RUN.inference.patch_size is None and RUN.inference.mode == "constant" and RUN.training.context == 1
    train(job, RUN)
    job = FoldJob(job.train_tiles, job.val_tiles, str(resumed), TASK)
    assert train(job, RUN, stop_after=2) == {"stopped_at": 2}
    assert not (resumed / "model.pt").exists()
    summary = train(job, RUN)
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(resumed / "model.pt", weights_only=True)
    assert a["meta"]["best"] == b["meta"]["best"] and a["meta"]["trainer"] == "edpcnn" and a["meta"]["object"] == "WT"
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for f in ("metrics.csv", "curves.png", "summary.json", "checkpoint.pt"):
        assert (resumed / f).exists(), f
    assert {"dice_WT", "dice_mean", "sg_gt_loss", "centre_loss"} <= set((resumed / "metrics.csv").read_text().split("\n")[0].split(","))
    assert 0 <= summary["best"]["dice_mean"] <= 1 and summary["best"]["step"] in (2, 4)
    assert dict(json.loads((resumed / "summary.json").read_text())["task"]["regions"])["WT"] == ["NCR", "ED", "ET"]

    model, meta = load_model(resumed / "model.pt")
    assert isinstance(model, EDPCNN) and model.n_outputs == 3 and model.object_channel == 2 and meta["context"] == 1
    vol = np.load(npys[2])[:4].astype(np.float32)
    probs = predict_volume([model], vol, meta["context"], ICFG, TASK.activation)
    assert probs.shape == (3, 6, 28, 24)
    assert set(np.unique(probs[2])) <= {0.0, 1.0} and not probs[:2].any()  # the EDPCNN mask in WT only
    assert set(np.unique(TASK.decode(probs))) <= {0, 2}


class _PassThrough(nn.Module):
    """A stand-in U-Net whose map is channel ``c`` of the input, as logits +-3 (an oracle map)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c

    def forward(self, x):
        return x[:, self.c: self.c + 1] * 6 - 3


def _oracle_model(in_channels: int, c: int, object_channel: int = 0) -> EDPCNN:
    cfg = with_io_channels(model_config_from_mapping({**EDP, "n_rays": 32, "n_points": 14, "radius_px": 14.0,
                                                      "object_channel": object_channel}), in_channels, 3)
    model = build_model(cfg)
    model.unet = _PassThrough(c)
    return model


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_predict_volume_gives_the_star_object_in_wt_and_empty_slices_stay_empty():
    z, h, w = 5, 40, 36
    wt = np.zeros((z, h, w), bool)
    wt[1] = _disc(h, w, 18, 15, 7)
    wt[2] = _disc(h, w, 20, 17, 9) | _disc(h, w, 20, 26, 4)  # lobulated, star-shaped around its centre
    vol = np.zeros((4, z, h, w), np.float32)
    vol[2] = wt  # the oracle map reads modality 2 of the middle slice (context 1: channels 4..7)
    vol[0] = np.random.default_rng(0).normal(size=(z, h, w))  # other slices' channels do not leak in
    probs = predict_volume([_oracle_model(12, 4 + 2)], vol, 1, ICFG, "sigmoid")
    pred = TASK.decode(probs)
    assert _dice(pred[1] == 2, wt[1]) > 0.9 and _dice(pred[2] == 2, wt[2]) > 0.9
    assert not pred[[0, 3, 4]].any()  # map nowhere positive: no object
    assert set(np.unique(pred)) == {0, 2}  # WT only (ED); TC/ET are not segmented by EDPCNN


def test_label_tasks_paint_the_union_with_the_first_label():
    task = Task("tissue", ("t1",), {"csf": 1, "gm": 2, "wm": 3})
    target = np.zeros((2, 1, 4, 4), np.float32)
    target[0, 0, 1, 1], target[0, 0, 2, 2], target[1, 0, 0, 0] = 1, 3, 2
    assert object_mask(target, "labels", 1).sum() == 3 and object_mask(target, "labels", 1)[0, 2, 2]
    mask = np.zeros((4, 4), np.float32)
    mask[1:3, 1:3] = 1
    probs = mask_to_probs(mask, task.n_outputs, task.activation, object_channel(task))
    assert probs.shape == (4, 4, 4) and np.allclose(probs.sum(0), 1)
    assert np.array_equal(task.decode(probs), np.where(mask > 0, 1, 0))
    with pytest.raises(ValueError, match="target_kind"):
        object_mask(target, "boxes", 0)


def test_predict_case_writes_a_native_wt_label_map(tmp_path, monkeypatch):
    import medseg.inference.case
    from medseg.inference.case import predict_case

    z, h, w = 4, 40, 36
    wt = np.zeros((z, h, w), bool)
    wt[1:3] = _disc(h, w, 19, 18, 8)
    native = sitk.GetImageFromArray(wt.astype(np.float32) * 100 + 10)
    native.SetSpacing((2.0, 2.0, 2.0))
    native.SetOrigin((-10.0, 5.0, 3.0))
    sitk.WriteImage(native, str(tmp_path / "ref.nii.gz"))
    # the case folder as preprocessing leaves it: working grid = native grid (n4/, no registration), norm.npz
    job = CaseJob("c0", {"flair": str(tmp_path / "ref.nii.gz")}, CaseFolder(str(tmp_path / "c0")))
    (tmp_path / "c0" / "n4").mkdir(parents=True)
    sitk.WriteImage(native, job.folder.images("n4", ["flair"])["flair"])
    image = np.zeros((1, 4, z, h, w), np.float32)
    image[0, 3] = wt
    np.savez(job.folder.norm, image=image, brain=np.ones((z, h, w), np.uint8))
    model = _oracle_model(4, 3, object_channel(SORTED))  # WT is channel 2 of the workflow's task
    monkeypatch.setattr(medseg.inference.case, "load_model", lambda p: (model, {"context": 0, "task": SORTED.to_dict()}))
    out = tmp_path / "pred.nii.gz"
    res = predict_case(job, NativeStage(stage="n4", reference="flair", registered=False), ["fake.pt"], ICFG, SORTED,
                       str(out))
    got = sitk.ReadImage(str(out))
    labels = sitk.GetArrayFromImage(got)
    assert got.GetSpacing() == (2.0, 2.0, 2.0) and got.GetOrigin() == (-10.0, 5.0, 3.0)
    assert set(np.unique(labels)) == {0, 2} and _dice(labels > 0, wt) > 0.9
    assert res["volumes_ml"]["WT"] > 0 and res["volumes_ml"]["TC"] == 0 and res["volumes_ml"]["ET"] == 0


@pytest.mark.slow  # a snakemake dry run: ~10 s alone, 110 s measured on the busy 2-core machine
def test_workflow_dry_run_of_the_edpcnn_target(tmp_path):
    """config.yaml + tiny.yaml validate with models.edpcnn (schema defaults are not filled into it)
    and results/brats_edpcnn.json has the whole DAG."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(repo / "config.yaml"), str(repo / "tests/configs/tiny.yaml"), "-n", "--cores", "2",
           "results/brats_edpcnn.json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "MEDSEG_TRACKING": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    for rule in ("train_model", "predict_case", "evaluate_case", "aggregate_results"):
        assert rule in r.stdout, rule
