"""3-D patch batches: determinism, nnU-Net foreground share, targets, padding, augmentation, memmaps."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from medseg.training.config import Augment3DConfig
from medseg.training.augment3d import SpatialDraw, augment3d, input_extent, warp
from medseg.training.batches import Prefetcher
from medseg.training.batches3d import (Patch3DConfig, PoolPrefetcher, VolumeSet3D, crop_pad, locations_path, make_batch3d,
                           sample_patch, write_class_locations)

NO_AUG = Augment3DConfig(p_rotate=0, p_scale=0, p_flip=0, p_brightness=0, p_contrast=0, p_gamma=0, p_noise=0)


def _write_cases(folder, kind: str, shapes=((40, 48, 36), (30, 40, 44)), dtype=np.float16):
    """Cases with three small blobs: label 1 / 2 / 3 (regions: WT = 1|2|3, TC = 1|3, ET = 3)."""
    rng = np.random.default_rng(0)
    images, targets = [], []
    for i, shape in enumerate(shapes):
        lab = np.zeros(shape, np.uint8)
        lab[5:9, 6:10, 7:11] = 2
        lab[20:23, 25:28, 20:22] = 1
        lab[12:14, 30:32, 30:32] = 3 if i == 0 else 1  # case 1 has no label 3 (no ET)
        img = rng.normal(0, 1, (2, *shape)).astype(dtype)
        target = lab if kind == "labels" else np.stack([lab > 0, (lab == 1) | (lab == 3), lab == 3]).astype(np.uint8)
        np.save(folder / f"img{i}.npy", img)
        np.save(folder / f"tgt{i}.npy", target)
        images.append(folder / f"img{i}.npy")
        targets.append(folder / f"tgt{i}.npy")
    return images, targets


@pytest.fixture
def label_set(tmp_path):
    return VolumeSet3D(*_write_cases(tmp_path, "labels"), target_kind="labels", n_classes=4)


@pytest.fixture
def region_set(tmp_path):
    return VolumeSet3D(*_write_cases(tmp_path, "regions"), target_kind="regions", n_classes=3)


def test_memory_mapped_and_sidecar(tmp_path, label_set):
    assert all(isinstance(a, np.memmap) for a in label_set.images + label_set.targets)
    side = locations_path(tmp_path / "tgt0.npy")
    assert side.exists() and side.stat().st_size < 10_000
    loc = label_set.locations[0]
    assert loc.present == [1, 2, 3] and label_set.locations[1].present == [1, 2]
    for cls in loc.present:  # every stored voxel really is of its class
        j = loc.classes.index(cls)
        pts = loc.coords[loc.offsets[j]: loc.offsets[j + 1]]
        assert (label_set.targets[0][tuple(pts.T)] == cls).all()
    assert loc.counts[loc.classes.index(2)] == 4 * 4 * 4


def test_same_seed_step_same_batch_and_steps_differ(label_set):
    cfg = Patch3DConfig(patch_size=(16, 16, 16))
    a = make_batch3d(label_set, 3, 7, 4, cfg, Augment3DConfig())
    b = make_batch3d(label_set, 3, 7, 4, cfg, Augment3DConfig())
    c = make_batch3d(label_set, 4, 7, 4, cfg, Augment3DConfig())
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # shards of the global batch concatenate to the global batch (what a DDP rank builds)
    halves = [make_batch3d(label_set, 3, 7, 4, cfg, Augment3DConfig(), samples=r) for r in (range(0, 2), range(2, 4))]
    np.testing.assert_array_equal(np.concatenate([h[0] for h in halves]), a[0])


def test_foreground_share_and_class_present(label_set):
    cfg = Patch3DConfig(patch_size=(8, 8, 8))
    n, forced, classes = 600, 0, []
    for i in range(n):
        x, y, info = sample_patch(label_set, 0, i, 0, cfg, None)
        if info["forced"]:
            forced += 1
            classes.append((info["case"], info["cls"]))
            assert (y == info["cls"]).any(), info
    # binomial(600, 1/3): std 11.5, so +-40 is > 3 sigma
    assert abs(forced - n / 3) < 40
    # the class is uniform among those present: case 0 has labels 1-3, case 1 only 1-2
    for case, present in ((0, [1, 2, 3]), (1, [1, 2])):
        drawn = [c for k, c in classes if k == case]
        counts = np.bincount(drawn, minlength=4)[1:]
        assert counts[len(present):].sum() == 0
        expect = len(drawn) / len(present)
        assert np.all(np.abs(counts[: len(present)] - expect) < 4 * np.sqrt(expect)), (case, counts)


def test_regions_and_labels_targets(label_set, region_set):
    cfg = Patch3DConfig(patch_size=(12, 10, 8), fg_fraction=1.0, jitter=0.0)
    xl, yl = make_batch3d(label_set, 0, 1, 3, cfg, None)
    xr, yr = make_batch3d(region_set, 0, 1, 3, cfg, None)
    assert xl.shape == (3, 2, 12, 10, 8) and xl.dtype == np.float32
    assert yl.shape == (3, 12, 10, 8) and yl.dtype == np.int64 and yl.max() <= 3
    assert yr.shape == (3, 3, 12, 10, 8) and yr.dtype == np.float32 and set(np.unique(yr)) <= {0.0, 1.0}
    for i in range(3):
        _, y, info = sample_patch(region_set, 1, 0, i, cfg, None)
        assert y[info["cls"]].any()  # the drawn region is in the patch


def test_small_volume_is_padded(tmp_path):
    vols = VolumeSet3D(*_write_cases(tmp_path, "labels", shapes=((10, 40, 12),), dtype=np.float32), "labels", 4)
    cfg = Patch3DConfig(patch_size=(16, 16, 16))
    for step in range(20):
        x, y, info = sample_patch(vols, 0, step, 0, cfg, None)
        z0, _, x0 = info["start"]
        assert -6 <= z0 <= 0 and -4 <= x0 <= 0  # the volume sits anywhere in the padded box
        inside = (slice(-z0, -z0 + 10), slice(None), slice(-x0, -x0 + 12))
        assert not np.any(np.delete(x[0], np.s_[-z0: -z0 + 10], axis=0))  # padding is zero
        np.testing.assert_array_equal(x[0][inside], crop_pad(vols.images[0][0], info["start"], (16, 16, 16))[inside])


def test_crop_pad_oracle():
    a = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    out = crop_pad(a, (-1, 3, 2), (3, 3, 3))
    assert out.shape == (3, 3, 3)
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(out[1:, :2], a[0:2, 3:5, 2:5])
    np.testing.assert_array_equal(out[1:, 2], 0)


def test_augment_keeps_image_and_target_aligned():
    rng = np.random.default_rng(0)
    lab = np.zeros((24, 24, 24), np.uint8)
    lab[6:16, 8:20, 5:12] = 1
    lab[14:20, 3:9, 12:22] = 1
    cfg = replace(NO_AUG, p_rotate=1, p_scale=1, p_elastic=1, p_flip=0.5)
    for seed in range(4):
        x, y = augment3d(lab[None].astype(np.float32), lab[None].copy(), np.random.default_rng(seed), cfg)
        # trilinear image = 1 exactly only where every neighbour is 1, so nearest must say 1 there
        assert (y[0][x[0] == 1] == 1).all() and (y[0][x[0] == 0] == 0).all()
        assert ((x[0] > 0.5) == (y[0] == 1)).mean() > 0.97
    # label maps (softmax targets): a one-hot image is 1 exactly only where nearest picks that label
    labels = lab + (np.indices(lab.shape)[0] > 12).astype(np.uint8) * 2  # values 0..3
    onehot = np.stack([labels == k for k in range(4)]).astype(np.float32)
    x, y = augment3d(onehot, labels.copy(), np.random.default_rng(9), cfg)
    assert y.shape == labels.shape and y.dtype == np.uint8
    for k in range(4):
        assert (y[x[k] == 1] == k).all()
    # flips only: an exact copy of the geometry
    x, y = augment3d(lab[None].astype(np.float32), lab, rng, replace(NO_AUG, p_flip=1.0))
    np.testing.assert_array_equal(x[0], y)
    np.testing.assert_array_equal(x[0], lab[::-1, ::-1, ::-1])


def test_warp_identity_and_rotation_oracle():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9, 11, 13)).astype(np.float32)
    y = (x[0] > 0).astype(np.uint8)
    xo, yo = warp(x, y, SpatialDraw(np.eye(3), None), (9, 11, 13))
    np.testing.assert_allclose(xo, x, atol=1e-5)
    np.testing.assert_array_equal(yo, y)
    # a 90-degree turn about Z maps output (y, x) to input (-x, y): np.rot90 of the cube
    cube = rng.normal(size=(1, 5, 7, 7)).astype(np.float32)
    rot = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)
    xo, _ = warp(cube, np.zeros((5, 7, 7), np.uint8), SpatialDraw(rot, None), (5, 7, 7))
    np.testing.assert_allclose(xo[0], np.rot90(cube[0], k=1, axes=(2, 1)), atol=1e-5)
    # zoom out by 2: the input box needed is twice the output
    assert input_extent(SpatialDraw(np.eye(3) * 2, None), (8, 8, 8)) == (17, 17, 17)


def test_augment_config_validation():
    with pytest.raises(ValueError, match="p_rotate"):
        Augment3DConfig(p_rotate=1.5)
    with pytest.raises(ValueError, match="scale"):
        Augment3DConfig(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="fg_fraction"):
        Patch3DConfig(fg_fraction=2)


def test_bad_target_shape_is_named(tmp_path):
    images, targets = _write_cases(tmp_path, "labels", shapes=((8, 8, 8),))
    with pytest.raises(ValueError, match="tgt0.npy"):
        VolumeSet3D(images, targets, "regions", 3)


def test_stale_sidecar_is_rebuilt(tmp_path):
    images, targets = _write_cases(tmp_path, "labels", shapes=((8, 10, 12),))
    side = write_class_locations(targets[0], "labels", 4)
    with pytest.raises(ValueError, match="does not match"):
        VolumeSet3D(images, targets, "labels", 5)
    side.unlink()
    with pytest.raises(ValueError, match="missing"):
        VolumeSet3D(images, targets, "labels", 4, build_locations=False)


def test_prefetchers_give_the_inline_batches(label_set):
    cfg = Patch3DConfig(patch_size=(10, 12, 8))
    make = lambda s: make_batch3d(label_set, s, 5, 2, cfg, Augment3DConfig(p_rotate=1))  # noqa: E731
    inline = [make(s) for s in range(3, 9)]
    for pre in (Prefetcher(make, 3, 9), PoolPrefetcher(make, 3, 9, workers=3, depth=4)):
        got = list(pre)
        assert [s for s, _ in got] == list(range(3, 9))
        for (_, (x, y)), (xi, yi) in zip(got, inline):
            np.testing.assert_array_equal(x, xi)
            np.testing.assert_array_equal(y, yi)


def test_from_tiles_reads_the_folds_channels_and_masks(tmp_path):
    """The 2.5-D tile format: F*C normalised channels (fold-major) then WT/TC/ET float16 masks."""
    rng = np.random.default_rng(2)
    arr = rng.normal(size=(2 * 2 + 3, 12, 14, 10)).astype(np.float16)
    arr[4:] = 0
    arr[4:, 3:7, 4:9, 2:6] = 1
    arr[6, 4:5, 5:6, 3:4] = 0  # ET smaller than WT
    np.save(tmp_path / "c.npy", arr)
    (tmp_path / "c.json").write_text('{"n_image_channels": 2, "n_folds": 2}')
    vols = VolumeSet3D.from_tiles([tmp_path / "c.npy"], fold=1)
    assert isinstance(vols.images[0], np.memmap) and vols.n_channels == 2 and vols.n_classes == 3
    assert (tmp_path / "c.locations.npz").exists()
    x, y, info = sample_patch(vols, 0, 0, 0, Patch3DConfig(patch_size=(8, 8, 8), fg_fraction=1.0), None)
    np.testing.assert_array_equal(x, crop_pad(arr[2:4], info["start"], (8, 8, 8)).astype(np.float32))
    np.testing.assert_array_equal(y, crop_pad(arr[4:], info["start"], (8, 8, 8)).astype(np.float32))
    assert y[info["cls"]].any()
    with pytest.raises(ValueError, match="fold 2"):
        VolumeSet3D.from_tiles([tmp_path / "c.npy"], fold=2)
