"""The seed 3-D networks train and predict through the same workflow code as the 2.5-D U-Net.

Data: three tiny cases of the embedded BraTS demo (4 mm, native grid, z-scored inside the
brain: no registration), tiled like the workflow does (:func:`medseg.preprocess.tiling.tile_case`); each
model trains a few steps with :func:`medseg.training.loop.train` (3-D patches, stitched validation) and
predicts the held-out case with :func:`medseg.inference.case.predict_case`.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medseg.cohort.synth import MODALITIES, SynthConfig, generate_case
from medseg.inference.case import predict_case
from medseg.models.checkpoint import load_model
from medseg.plan.runs import resolve_run
from medseg.preprocess.case import CaseFolder, CaseJob
from medseg.preprocess.config import NativeStage
from medseg.preprocess.tiling import tile_case
from medseg.tasks.presets import brats_task
from medseg.training.config import FoldJob, Patch3DConfig, TrainConfig
from medseg.training.loop import train

TASK = brats_task("brats", "2021")
TINY = {  # small but the real architectures (docs/models.md); patches a multiple of each net's stride
    "unet3d": {"arch": "unet3d", "features": [4, 8, 16], "seg_levels": 2, "patch_size": [16, 24, 24]},
    "tiramisu3d": {"arch": "tiramisu3d", "first_features": 8, "growth_rate": 4, "layers_per_block": [1, 2, 1],
                   "dropout": 0.0, "patch_size": [16, 24, 24]},
    "factorized_unet": {"arch": "factorized_unet", "features": [4, 8, 16], "patch_size": [16, 24, 24]},
}
PAPER = {"unet3d": ("jaccard", "gaussian"), "tiramisu3d": ("dice_bce", "constant"),
         "factorized_unet": ("multiclass_iou", "gaussian")}
TRAINING = {"steps": 4, "batch_size": 2, "checkpoint_every": 4, "val_every": 4, "warmup": 1, "threads": 1,
            "device": "cpu", "data_workers": 1, "context": 1}


def run_of(model: dict, training: dict = TRAINING, inference: dict | None = None, key: str = "m"):
    """The plan's run of one model key (``models.<key>`` = ``model``)."""
    return resolve_run({"models": {key: model}, "training": training, "inference": inference or {"device": "cpu"}}, key)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """Tiles of 2 training + 1 validation/test case, the test case's norm.npz and native images."""
    root = tmp_path_factory.mktemp("demo3d")
    cfg = SynthConfig(n_cases=3, seed=7, spacing_mm=(4.0, 4.0, 4.0), anatomy="icbm", fov_variety=False)
    npys, cases = [], []
    for i, case in enumerate(cfg.case_ids()):
        generate_case(cfg, i, root / "images", root / "truth")
        d = root / "images" / case
        image = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(d / f"{case}_{m}.nii.gz"), sitk.sitkFloat32))
                          for m in MODALITIES])
        brain = image.max(0) > 0
        image = np.where(brain, (image - image[:, brain].mean(1)[:, None, None, None])
                         / image[:, brain].std(1)[:, None, None, None], 0).astype(np.float32)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(d / f"{case}_seg.nii.gz")))
        data = {"image": image[None], "brain": brain, "labels": labels}
        tile_case(case, data, TASK, root / f"{case}.npy", root / f"{case}.json")
        np.savez(root / f"{case}_norm.npz", image=image[None], brain=brain)
        npys.append(str(root / f"{case}.npy"))
        cases.append(case)
    return {"root": root, "npys": npys, "cases": cases}


@pytest.mark.parametrize("arch", sorted(TINY))
def test_seed_model_trains_and_predicts_on_the_demo(demo, arch, tmp_path, monkeypatch):
    import medseg.inference.volume as vi

    windows = []
    real = vi.sliding_window_inference

    def spy(image, predictor, patch, **kw):
        windows.append((tuple(image.shape), tuple(patch), kw["mode"]))
        return real(image, predictor, patch, **kw)

    monkeypatch.setattr(vi, "sliding_window_inference", spy)
    run = run_of(TINY[arch], key=arch)
    loss, mode = PAPER[arch]
    # training.loss and inference.mode unset: the model's own (the paper's) defaults apply
    assert "loss" not in TRAINING and run.training.loss == loss and run.inference.mode == mode
    assert run.training.context == 0 and run.training.patch_size == tuple(TINY[arch]["patch_size"])
    npys = demo["npys"]
    out = tmp_path / "fold_0"
    summary = train(FoldJob(tuple(npys[:2]), tuple(npys[2:]), str(out), TASK), run)
    assert summary["loss"] == loss and summary["context"] == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 4 and all(np.isfinite(float(r["loss"])) for r in rows)
    assert 0 <= float(rows[-1]["dice_mean"]) <= 1  # validated at the last step, through the stitched inference
    # validation ran 3-D windows of the model's patch over the whole 4-channel volume, with its blending
    (shape, patch, used), = windows
    assert shape[0] == 4 and len(shape) == 4 and patch == tuple(min(p, s) for p, s in zip(TINY[arch]["patch_size"], shape[1:]))
    assert used == mode and patch != shape[1:]  # several windows: blending matters
    model, meta = load_model(out / "model.pt")
    assert model.spatial_dims == 3 and meta["model_config"]["arch"] == arch
    case, root = demo["cases"][2], demo["root"]
    t1ce = str(root / "images" / case / f"{case}_t1ce.nii.gz")
    # the case's folder as preprocessing leaves it: the working grid is the native one (no registration)
    folder = CaseFolder(str(tmp_path / case))
    Path(folder.n4).mkdir(parents=True)
    shutil.copy(t1ce, folder.images("n4", ["t1ce"])["t1ce"])
    shutil.copy(root / f"{case}_norm.npz", folder.norm)
    job = CaseJob(case, {"t1ce": t1ce}, folder)
    res = predict_case(job, NativeStage(stage="n4", reference="t1ce", registered=False), [str(out / "model.pt")],
                       run.inference, TASK, str(tmp_path / "pred.nii.gz"))
    pred, native = sitk.ReadImage(str(tmp_path / "pred.nii.gz")), sitk.ReadImage(t1ce)
    assert pred.GetSize() == native.GetSize() and pred.GetSpacing() == native.GetSpacing()
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 4} and res["n_models"] == 1
    assert windows[-1][2] == mode


def test_training_patch_size_and_model_overrides():
    run = run_of({**TINY["unet3d"], "training": {"patch_size": [8, 16, 16], "loss": "ce"}, "inference": {"mode": "pyramid"}},
                 {"patch_size": [64, 64], "loss": "dice_bce", "batch_size": 4}, {"mode": "gaussian"})
    t, i = run.training, run.inference
    assert t.patch_size == (8, 16, 16) and t.loss == "ce" and t.batch_size == 4 and i.mode == "pyramid"
    assert i.patch_size == (8, 16, 16)  # the window: the training patch
    t2 = run_of(TINY["unet3d"], {"patch_size": [64, 64]}, {}).training
    assert t2.patch_size == (16, 24, 24)  # 2 values are the 2-D models' crop
    with pytest.raises(ValueError, match="models.m.training"):
        run_of({**TINY["unet3d"], "training": {"stpes": 3}}, {}, {})
    with pytest.raises(ValueError, match="patch3d.patch_size must stay null"):
        TrainConfig(patch3d=Patch3DConfig((8, 8, 8)))


@pytest.mark.slow  # ~25 s idle, 65 s on 2 busy cores: two torchrun workers import torch and join a gloo group
def test_ddp_two_gloo_processes_through_train_match_one_process(demo, tmp_path, monkeypatch):
    """torchrun, 2 CPU ranks, the real train(): same losses and weights as one process on the same global batch."""
    from medseg.training.launch import launch_torchrun

    model = {**TINY["unet3d"], "norm": "instance"}  # per-sample normalisation
    training = {**TRAINING, "steps": 3, "loss": "ce", "checkpoint_every": 3}  # a mean over samples
    npys = demo["npys"][:2]
    src = str(Path(__file__).resolve().parents[1] / "src")  # the ranks import this checkout's medseg
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    run = run_of(model, training)
    two = launch_torchrun(2, FoldJob(tuple(npys), (), str(tmp_path / "ddp"), TASK), run, timeout_s=300)
    assert two["world_size"] == 2
    one = train(FoldJob(tuple(npys), (), str(tmp_path / "one"), TASK), run)
    assert one["world_size"] == 1
    curve = lambda d: [float(r["loss"]) for r in csv.DictReader(open(tmp_path / d / "metrics.csv"))]  # noqa: E731
    np.testing.assert_allclose(curve("ddp"), curve("one"), rtol=1e-5)
    a = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    # float32 summation order differs (mean of 2 one-sample gradients vs the 2-sample mean, ~1e-7
    # relative); AdamW divides by sqrt(v), so elements whose gradient is ~0 (weights feeding
    # instance norm along its mean direction, biases before it) move by up to +-lr on that rounding
    # noise alone. Measured after 3 steps at lr 2e-3: median |difference| 1.4e-6, 99th percentile
    # 2.9e-5, max 3.6e-4. The control below (rank 0's shard alone) is far further off.
    flat = lambda sd: torch.cat([sd[k].flatten().float() for k in sorted(sd)])  # noqa: E731
    diff = (flat(a) - flat(b)).abs()
    assert diff.median() < 1e-5 and diff.quantile(0.99) < 2e-4, (diff.median(), diff.quantile(0.99))
    assert curve("one")[0] != curve("one")[1]  # it does train
    half = train(FoldJob(tuple(npys), (), str(tmp_path / "half"), TASK),
                 dataclasses.replace(run, training=dataclasses.replace(run.training, batch_size=1)))
    assert half["world_size"] == 1
    # (measured: 7e-4 relative; the DDP run agrees to 1e-5)
    assert np.max(np.abs(np.subtract(curve("half"), curve("one"))) / np.abs(curve("one"))) > 1e-4
    c = torch.load(tmp_path / "half" / "model.pt", weights_only=True)["state_dict"]
    assert (flat(c) - flat(b)).abs().median() > 10 * diff.median()
