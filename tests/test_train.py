"""Training: kill-and-resume gives identical weights; batches are pure functions of (seed, step)."""
import dataclasses

import numpy as np
import pytest
import torch

from medseg.io import write_json
from medseg.models.checkpoint import load_model
from medseg.models.unet import ModelConfig
from medseg.plan.runs import resolve_run
from medseg.tasks.presets import brats_task
from medseg.training.batches import TileSet, make_batch
from medseg.training.config import AugmentConfig, FoldJob, TrainConfig
from medseg.training.loop import train


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


def run_of(model: ModelConfig = MODEL, cfg: TrainConfig = CFG):
    """The plan's run of a model key with these network (timm_unet) and training settings."""
    mapping = {k: v for k, v in dataclasses.asdict(model).items() if k not in ("in_channels", "out_channels")}
    return resolve_run({"models": {"m": mapping}, "training": dataclasses.asdict(cfg), "inference": {"device": "cpu"}}, "m")


def _run(tmp_path, name, stop_after=None, resume_steps=()):
    npys, _ = make_tiles(tmp_path)
    job = FoldJob(tuple(npys[:2]), tuple(npys[2:]), str(tmp_path / name), TASK)  # slice tables: the .json beside
    run = run_of()
    assert run.training == dataclasses.replace(CFG, loss="dice_bce")  # the model's default loss, else CFG as given
    train(job, run, stop_after=stop_after)
    for _ in resume_steps:
        train(job, run)
    return tmp_path / name


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
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["optimizer"]["param_groups"][0]["fused"] is True  # AdamW's fused kernel on the CPU too


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
    from medseg.preprocess.tiling import tile_case

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


# ------------------------------------------------------------- what a checkpoint was trained from
FAST = TrainConfig(steps=4, batch_size=2, checkpoint_every=2, val_every=4, threads=1, warmup=1, device="cpu")


@pytest.fixture
def no_plots(monkeypatch):
    monkeypatch.setattr("medseg.training.loop.plot_curves", lambda *a, **k: None)  # 1.4 s a run; not under test here


def _fit(tiles, out, cfg=FAST, model=MODEL, stop_after=None):
    """Train without validation cases (fast); return the final weights (or None if stopped early)."""
    npys, _ = tiles
    train(FoldJob(tuple(npys[:2]), (), str(out), TASK), run_of(model, cfg), stop_after=stop_after)
    return torch.load(out / "model.pt", weights_only=True)["state_dict"] if stop_after is None else None


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_changed_training_config_retrains_instead_of_resuming(tmp_path, caplog, no_plots):
    """Rerunning a finished fold with another lr "resumed" at its last step and trained nothing
    (the old weights under the new config); now it starts fresh and gives exactly the weights of
    a first run with the new config. (seed, loss ...: test_fingerprint_parts.)"""
    tiles = make_tiles(tmp_path)
    old = _fit(tiles, tmp_path / "fold")
    new_cfg = dataclasses.replace(FAST, lr=1e-2)
    caplog.set_level("INFO", logger="medseg.training.loop")
    rerun = _fit(tiles, tmp_path / "fold", new_cfg)
    assert f"checkpoint {tmp_path / 'fold' / 'checkpoint.pt'} was trained with a different training config: starting fresh" in caplog.text
    assert not _same(rerun, old)
    assert _same(rerun, _fit(tiles, tmp_path / "fresh", new_cfg))


def test_changed_encoder_or_label_map_retrains(tmp_path, caplog, no_plots):
    """A new encoder crashed in load_state_dict; a fixed training label map (its tile rewritten)
    was ignored. Both start fresh now, saying why; an unchanged rerun resumes."""
    tiles = make_tiles(tmp_path)
    _fit(tiles, tmp_path / "fold")
    caplog.set_level("INFO", logger="medseg.training.loop")
    other = ModelConfig(encoder="resnet14t", decoder_channels=(16, 16, 8, 8, 8))
    before = _fit(tiles, tmp_path / "fold", model=other)
    assert "was trained with a different model: starting fresh" in caplog.text
    caplog.clear()
    arr = np.load(tiles[0][1])
    arr[-3:, :] = 1 - arr[-3:, :]  # the label channels of case c1, every slice: regions swapped with background
    np.save(tiles[0][1], arr)
    after = _fit(tiles, tmp_path / "fold", model=other)
    assert "was trained with a different inputs: starting fresh" in caplog.text
    assert not _same(after, before)
    caplog.clear()
    assert _same(_fit(tiles, tmp_path / "fold", model=other), after)
    assert f"resuming from {tmp_path / 'fold' / 'checkpoint.pt'} at step {FAST.steps}" in caplog.text
    assert "starting fresh" not in caplog.text


def test_interrupted_run_resumes_with_matching_fingerprint(tmp_path, caplog, no_plots):
    """Operational settings (checkpoint_every, device) may change between a kill and the
    restart; the run still resumes, and ends with the weights of an uninterrupted one."""
    tiles = make_tiles(tmp_path)
    _fit(tiles, tmp_path / "fold", stop_after=2)
    caplog.set_level("INFO", logger="medseg.training.loop")
    resumed = _fit(tiles, tmp_path / "fold", dataclasses.replace(FAST, checkpoint_every=1, device="auto"))
    assert f"resuming from {tmp_path / 'fold' / 'checkpoint.pt'} at step 2" in caplog.text
    assert _same(resumed, _fit(tiles, tmp_path / "straight"))


def test_fingerprint_parts(tmp_path):
    import os

    from medseg.tracking.fingerprint import differences, fingerprint

    npys, jsons = make_tiles(tmp_path, n=2)
    files = [*npys, *jsons]
    base = fingerprint(FAST, MODEL, files, {"fold": 0})
    for change in ({"lr": 1e-2}, {"seed": 1}, {"loss": "jaccard"}, {"steps": 5},
                   {"augment": dataclasses.replace(FAST.augment, flip=0.0)}):
        assert differences(base, fingerprint(dataclasses.replace(FAST, **change), MODEL, files, {"fold": 0})) == \
            ["training config"], change
    for change in ({"threads": 2}, {"checkpoint_every": 1}, {"device": "cuda"}):  # where and how it runs
        assert differences(base, fingerprint(dataclasses.replace(FAST, **change), MODEL, files, {"fold": 0})) == []
    assert differences(base, fingerprint(FAST, dataclasses.replace(MODEL, encoder="resnet18"), files, {"fold": 0})) == ["model"]
    assert differences(base, fingerprint(FAST, MODEL, files, {"fold": 1})) == ["inputs"]
    assert differences(base, fingerprint(FAST, MODEL, files[::-1], {"fold": 0})) == ["inputs"]
    assert differences(None, base) == ["training config", "model", "inputs"]  # a checkpoint from before fingerprints
    # content counts, not the time stamp: a tile rewritten identically is the same input ...
    np.save(npys[0], np.load(npys[0]))
    os.utime(npys[0], ns=(1, 1))
    assert differences(base, fingerprint(FAST, MODEL, files, {"fold": 0})) == []
    # ... and a file with the size and mtime of the previous fingerprint is not hashed again
    prev = fingerprint(FAST, MODEL, files, {"fold": 0})
    prev["files"][npys[0]][2] = "0" * 64
    assert fingerprint(FAST, MODEL, files, {"fold": 0}, previous=prev)["files"][npys[0]][2] == "0" * 64


def test_cases_on_their_own_grids_train_from_crops(tmp_path):
    """Without registration every case keeps its own grid: tiles of different in-plane shapes train
    from training.patch_size crops; whole-slice batches need one shape and say so."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    npys, jsons = make_tiles(a, n=1, shape=(6, 24, 20))
    more = make_tiles(b, n=1, shape=(6, 30, 26))
    tiles = TileSet(npys + more[0], jsons + more[1])
    assert tiles.plane is None and tiles.planes == [(24, 20), (30, 26)]
    x, y = make_batch(tiles, 0, 0, 4, 1, 0.5, (16, 16), AugmentConfig())
    assert x.shape == (4, 12, 16, 16) and y.shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="set training.patch_size"):
        make_batch(tiles, 0, 0, 4, 1, 0.5, None, AugmentConfig())


def test_stat_signature_changes_when_a_source_file_is_fixed_added_or_removed(tmp_path):
    import os

    from medseg.tracking.fingerprint import stat_signature

    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    a.write_bytes(b"truncated")
    b.write_bytes(b"fine")
    sig = stat_signature([a, b])
    assert stat_signature([a, b]) == sig  # stat only: stable while nothing changes
    a.write_bytes(b"the fixed file")
    fixed = stat_signature([a, b])
    assert fixed != sig
    st = a.stat()
    a.write_bytes(b"the fixed fil_")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert stat_signature([a, b]) != fixed  # same size, newer
    assert stat_signature([a]) != stat_signature([a, b]) != stat_signature([a, b, tmp_path / "gone.nii.gz"])


def test_augment_warps_as_the_scipy_resampling_it_replaced():
    """The batch's rotation/zoom about the patch centre in torch (grid_sample) gives scipy's ``affine_transform``
    of the same draw: bilinear with border values for images, nearest with zeros for targets (a non-square patch,
    so a swapped axis or aspect would show)."""
    from scipy import ndimage as ndi

    from medseg.training.batches import augment

    h, w = 64, 48
    img = np.zeros((1, 1, h, w), np.float32)
    img[0, 0, 10:30, 5:20], img[0, 0, 40:50, 30:44] = 1, 2
    geometry = AugmentConfig(flip=0, rotate_deg=10, scale=0.1, intensity_shift=0, intensity_scale=0, noise_std=0, bias=0)
    x, y = augment(img.copy(), img.copy(), np.random.default_rng(0), geometry)
    r = np.random.default_rng(0)
    r.random(1)  # augment's flip draw
    ang, zoom = np.deg2rad(r.uniform(-10, 10, 1))[0], 1 + r.uniform(-0.1, 0.1, 1)[0]
    mat = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) / zoom
    ctr = np.array([h, w]) / 2 - 0.5
    assert np.abs(ndi.affine_transform(img[0, 0], mat, ctr - mat @ ctr, order=1, mode="nearest") - x[0, 0]).max() < 1e-4
    assert np.array_equal(ndi.affine_transform(img[0, 0], mat, ctr - mat @ ctr, order=0, mode="constant"), y[0, 0])
    flipped, _ = augment(img.copy(), img.copy(), np.random.default_rng(0),
                         dataclasses.replace(geometry, flip=1.0, rotate_deg=0, scale=0))
    assert np.array_equal(flipped[0, 0], img[0, 0, :, ::-1])


@pytest.mark.parametrize("channels_last", [True, False])
def test_2d_training_steps_take_the_configured_memory_layout(tmp_path, monkeypatch, channels_last):
    """``training.channels_last`` (default true): the 2-D network's weights and each batch in NHWC layout."""
    from medseg.training import loop

    seen = []
    step = loop._step
    monkeypatch.setattr(loop, "_step", lambda f, x, y, s: seen.append(
        (x.is_contiguous(memory_format=torch.channels_last), next(p for p in f.parts["model"].parameters() if p.ndim == 4)
         .is_contiguous(memory_format=torch.channels_last))) or step(f, x, y, s))
    npys, _ = make_tiles(tmp_path)
    run = run_of(cfg=dataclasses.replace(CFG, steps=2, channels_last=channels_last))
    train(FoldJob(tuple(npys[:2]), (), str(tmp_path / "fold"), TASK), run)
    assert seen == [(channels_last, channels_last)] * 2


def test_batches_are_built_between_steps_on_the_cpu_and_ahead_on_a_gpu():
    """On the CPU a builder thread beside the step's OpenMP threads oversubscribes the job's cores, so
    batches are built in the training thread; on a GPU a Prefetcher thread builds them ahead. Both give
    the same batches for the same steps."""
    import threading

    from medseg.training.batches import batch_stream

    def make(step: int):
        return np.full(2, step), threading.current_thread().name

    main = threading.current_thread().name
    cpu = list(batch_stream(make, 3, 7, "cpu"))
    gpu = list(batch_stream(make, 3, 7, "cuda"))
    assert [s for s, _ in cpu] == [s for s, _ in gpu] == [3, 4, 5, 6]
    assert all(np.array_equal(a[0], b[0]) for (_, a), (_, b) in zip(cpu, gpu))
    assert {name for _, (_, name) in cpu} == {main}
    assert main not in {name for _, (_, name) in gpu}
