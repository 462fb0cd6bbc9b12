"""Training: kill-and-resume gives identical weights; batches are pure functions of (seed, step)."""
import numpy as np
import pytest
import torch

from medseg.data import AugmentConfig, TileSet, make_batch
from medseg.io import write_json
from medseg.models import ModelConfig
from medseg.tasks import brats_task
from medseg.train import TrainConfig, load_model, train
from medseg.volume_inference import InferenceConfig


def make_tiles(folder, n=3, shape=(6, 24, 20)):
    rng = np.random.default_rng(0)
    npys, jsons = [], []
    for i in range(n):
        img = rng.normal(0, 1, (4, *shape)).astype(np.float32)
        lab = np.zeros((3, *shape), np.float32)
        lab[0, 2:5, 5:15, 4:12] = 1
        lab[1, 2:5, 7:12, 6:10] = 1
        lab[2, 3:4, 8:11, 7:9] = 1
        img[:, lab[0] > 0] += 2.0
        arr = np.concatenate([img, lab]).astype(np.float16)
        p = folder / f"c{i}.npy"
        np.save(p, arr)
        write_json({"case": f"c{i}", "shape": list(arr.shape), "n_image_channels": 4,
                    "brain_slices": list(range(shape[0])), "fg_slices": [2, 3, 4]}, folder / f"c{i}.json")
        npys.append(str(p))
        jsons.append(str(folder / f"c{i}.json"))
    return npys, jsons


TASK = brats_task("brats", "2021")
MODEL = ModelConfig(encoder="resnet10t", decoder_channels=(16, 16, 8, 8, 8))
CFG = TrainConfig(steps=6, batch_size=2, checkpoint_every=2, val_every=3, threads=1, warmup=2, device="cpu")


def _run(tmp_path, name, stop_after=None, resume_steps=()):
    npys, jsons = make_tiles(tmp_path)
    out = tmp_path / name
    train((npys[:2], jsons[:2]), (npys[2:], jsons[2:]), out, MODEL, CFG, InferenceConfig(device="cpu"), TASK,
          stop_after=stop_after)
    for _ in resume_steps:
        train((npys[:2], jsons[:2]), (npys[2:], jsons[2:]), out, MODEL, CFG, InferenceConfig(device="cpu"), TASK)
    return out


def test_kill_and_resume_gives_identical_weights(tmp_path):
    straight = _run(tmp_path, "straight")
    resumed = _run(tmp_path, "resumed", stop_after=3, resume_steps=[1])
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(resumed / "model.pt", weights_only=True)
    assert a["meta"]["best"] == b["meta"]["best"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for f in ("metrics.csv", "curves.png", "summary.json"):
        assert (resumed / f).exists()
    model, meta = load_model(resumed / "model.pt")
    assert meta["context"] == CFG.context and model(torch.zeros(1, 12, 24, 20)).shape == (1, 3, 24, 20)


def test_interrupted_run_writes_no_model(tmp_path):
    out = _run(tmp_path, "killed", stop_after=2)
    assert (out / "checkpoint.pt").exists() and not (out / "model.pt").exists()


def test_batches_are_pure_and_oversample_foreground(tmp_path):
    npys, jsons = make_tiles(tmp_path)
    tiles = TileSet(npys, jsons)
    x1, y1 = make_batch(tiles, 5, 0, 8, 1, 1.0, None, AugmentConfig())
    x2, y2 = make_batch(tiles, 5, 0, 8, 1, 1.0, None, AugmentConfig())
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1.shape == (8, 12, 24, 20) and y1.shape == (8, 3, 24, 20)
    assert all(y1[i, 0].any() for i in range(8))  # fg_prob = 1: every sample holds tumour (rotation keeps some)
    x3, _ = make_batch(tiles, 6, 0, 8, 1, 1.0, None, AugmentConfig())
    assert not np.array_equal(x1, x3)


def test_bad_training_settings():
    with pytest.raises(ValueError, match="training.schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="fg_prob"):
        TrainConfig(fg_prob=2)


def test_one_tile_file_serves_every_fold(tmp_path):
    from medseg.tiling import tile_case

    rng = np.random.default_rng(1)
    image = rng.normal(0, 1, (2, 4, 6, 24, 20)).astype(np.float32)  # (folds, C, z, y, x)
    labels = np.zeros((6, 24, 20), np.uint8)
    labels[2:4, 5:9, 5:9] = 4
    table = tile_case("c0", {"image": image, "brain": np.ones((6, 24, 20), np.uint8), "labels": labels}, TASK,
                      tmp_path / "c0.npy", tmp_path / "c0.json")
    assert table["n_folds"] == 2 and table["n_image_channels"] == 4 and table["fg_slices"] == [2, 3]
    for fold in (0, 1):
        tiles = TileSet([str(tmp_path / "c0.npy")], [str(tmp_path / "c0.json")], fold=fold)
        np.testing.assert_allclose(tiles.image(0), image[fold], atol=1e-2)  # float16 tiles
        assert tiles.target(0).shape == (3, 6, 24, 20) and tiles.target(0)[0, 2:4, 5:9, 5:9].all()
    with pytest.raises(ValueError, match="fold 2"):
        TileSet([str(tmp_path / "c0.npy")], [str(tmp_path / "c0.json")], fold=2)
