"""Whole-slide path: level selection, tissue mask, out-of-core stitching and the stitch-slide CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from scipy import ndimage

from medseg.cli import main
from medseg.io import InputError
from medseg.wsi.predictors import identity, load_predictor
from medseg.wsi.slide import open_slide, read_region, select_level
from medseg.wsi.stitch_slide import TIFF_NAME, ZARR_NAME, stitch_slide
from medseg.wsi.config import SlideStitchConfig
from medseg.wsi.synthetic import BACKGROUND, write_synthetic_slide
from medseg.wsi.tissue import grey_levels, otsu_threshold, tissue_mask, tissue_mask_from_rgb

DEMO_SLIDE = Path(__file__).resolve().parents[1] / "data" / "slides" / "cmu_small_region.svs"
SIZE = 1024


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory) -> Path:
    return write_synthetic_slide(tmp_path_factory.mktemp("wsi") / "synthetic.tif", SIZE, mpp=0.5, tile=256,
                                 min_level_side=256)


def slide_grey(path: Path, level_index: int = 0) -> np.ndarray:
    slide = open_slide(path)
    level = select_level(slide, path, level=level_index)
    return grey_levels(read_region(slide, level, 0, 0, level.height, level.width))


def test_select_level(slide_path, tmp_path):
    slide = open_slide(slide_path)
    assert slide.level_count == 3
    assert select_level(slide, slide_path).level == 0
    lv = select_level(slide, slide_path, mpp=1.9)
    assert (lv.level, lv.height, lv.mpp) == (2, 256, pytest.approx(2.0))
    assert select_level(slide, slide_path, level=1).downsample == pytest.approx(2.0)
    with pytest.raises(ValueError, match="level must be in"):
        select_level(slide, slide_path, level=3)
    with pytest.raises(ValueError, match="not both"):
        select_level(slide, slide_path, level=0, mpp=0.5)
    bare = write_synthetic_slide(tmp_path / "nompp.tif", 256, mpp=None, min_level_side=256)
    with pytest.raises(ValueError, match=r"nompp\.tif has no microns-per-pixel"):
        select_level(open_slide(bare), bare, mpp=0.5)
    with pytest.raises(InputError, match="missing.svs does not exist"):
        open_slide(tmp_path / "missing.svs")


def test_read_region_pads_outside_with_white(slide_path):
    slide = open_slide(slide_path)
    level = select_level(slide, slide_path, level=1)
    tile = read_region(slide, level, 500, 500, 32, 32)
    assert tile.shape == (32, 32, 3) and (tile[12:, :] == 255).all() and (tile[:12, :12] != 255).any()


def test_otsu_and_tissue_mask(slide_path):
    values = np.r_[np.full(100, 0.2), np.full(50, 0.7)]
    assert 0.2 <= otsu_threshold(values) < 0.7
    mask, scale = tissue_mask(open_slide(slide_path))
    assert scale == 4.0 and mask.shape == (256, 256)
    area = np.pi * (0.2 * 0.15 + 0.22 * 0.25 + 0.08 * 0.10)  # the synthetic ellipses
    assert mask.mean() == pytest.approx(area, abs=0.03)
    blank = np.full((64, 64, 3), 240, np.uint8) + np.random.default_rng(0).integers(0, 4, (64, 64, 3), dtype=np.uint8)
    assert not tissue_mask_from_rgb(blank).any()
    grey = np.full((64, 64, 3), 230, np.uint8)
    grey[10:40, 10:40] = 90
    assert tissue_mask_from_rgb(grey, "grey")[12:38, 12:38].all() and tissue_mask_from_rgb(grey).sum() == 900


def test_stitch_slide_cli_identity(slide_path, tmp_path):
    out = tmp_path / "out"
    rc = main(["stitch-slide", "-i", str(slide_path), "-o", str(out), "--tile", "128", "--overlap", "0.25",
               "--mode", "gaussian", "--predictor", "identity", "--batch-size", "3"])
    assert rc == 0
    group = zarr.open_group(str(out / ZARR_NAME), mode="r")
    prob = group["0"][0]
    assert prob.shape == (SIZE, SIZE) and group.attrs["mpp"] == pytest.approx(0.5)
    grey = slide_grey(slide_path)
    tissue = ndimage.binary_erosion(grey < BACKGROUND / 255 - 0.05, iterations=3)
    assert tissue.mean() > 0.2
    np.testing.assert_allclose(prob[tissue], grey[tissue], atol=1e-5)  # seamless: stitching is exact
    assert prob[:8, -8:].max() == 0  # background windows skipped, left at 0
    with tifffile.TiffFile(out / TIFF_NAME) as tif:
        series = tif.series[0]
        assert tif.is_ome and len(series.levels) >= 3 and series.levels[0].shape == (SIZE, SIZE)
        assert series.levels[1].shape == (SIZE // 2, SIZE // 2)
        assert tif.pages[0].tilewidth == 256
        channels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]["Channel"]
        level0 = series.levels[0].asarray()
    assert channels["Name"] == "channel 0"  # one channel, no class names: named by its index
    assert np.abs(level0[tissue].astype(float) - grey[tissue] * 255).max() <= 1.0
    assert not list(out.glob(".*"))  # no partial outputs left behind


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated in favour of torch.export
def test_stitch_slide_at_mpp_with_torchscript(slide_path, tmp_path):
    class Half(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[:, :1] * 0 + 1.0, x[:, :1] * 0], dim=1)  # logits -> softmax (0.73, 0.27)

    model = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(Half()), str(model))
    summary = stitch_slide(slide_path, tmp_path / "o", load_predictor(str(model)),
                           SlideStitchConfig(tile=128, overlap=0.5, mode="pyramid", mpp=1.0, batch_size=8))
    assert summary["level"] == 1 and summary["shape"] == [SIZE // 2, SIZE // 2]
    prob = zarr.open_group(str(tmp_path / "o" / ZARR_NAME), mode="r")["0"][...]
    covered = prob.sum(axis=0) > 0
    np.testing.assert_allclose(prob[:, covered].sum(axis=0), 1.0, atol=1e-5)
    with tifffile.TiffFile(tmp_path / "o" / TIFF_NAME) as tif:
        assert tif.series[0].shape == (2, SIZE // 2, SIZE // 2)
    with pytest.raises(ValueError, match="classes must name the model's 1 labels"):  # 2 channels: background + 1
        stitch_slide(slide_path, tmp_path / "x", load_predictor(str(model)), SlideStitchConfig(tile=128, mpp=2.0),
                     classes=["a", "b"])
    assert not (tmp_path / "x" / TIFF_NAME).exists() and not list((tmp_path / "x").glob(".*"))


def test_no_tissue_is_an_error(tmp_path):
    blank = tmp_path / "blank.tif"
    with tifffile.TiffWriter(blank, bigtiff=True) as tif:
        tif.write(np.full((512, 512, 3), 250, np.uint8), tile=(256, 256), photometric="rgb")
    with pytest.raises(ValueError, match=r"no tissue found in slide .*blank\.tif"):
        stitch_slide(blank, tmp_path / "o", identity, SlideStitchConfig(tile=128))
    assert main(["stitch-slide", str(blank), "--out", str(tmp_path / "o"), "--predictor", "identity"]) == 2


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_bad_config_and_predictor(tmp_path):
    with pytest.raises(ValueError, match="overlap"):
        SlideStitchConfig(overlap=1.5)
    with pytest.raises(ValueError, match="mode"):
        SlideStitchConfig(mode="hann")
    with pytest.raises(ValueError, match="activation"):
        load_predictor("identity", activation="relu")
    with pytest.raises(InputError, match="neither a built-in"):
        load_predictor(str(tmp_path / "nope.pt"))
    for name in ("junk.pt", "junk.pt2"):
        (tmp_path / name).write_bytes(b"not a model")
        with pytest.raises(InputError, match="not a medseg checkpoint"):
            load_predictor(str(tmp_path / name))


@pytest.mark.skipif(not DEMO_SLIDE.exists(), reason=f"demo slide missing: run scripts/fetch_demo_slide.sh to get {DEMO_SLIDE}")
def test_demo_slide_identity(tmp_path):
    summary = stitch_slide(DEMO_SLIDE, tmp_path, identity, SlideStitchConfig(tile=512, overlap=0.25))
    prob = zarr.open_group(summary["zarr"], mode="r")["0"][0]
    grey = slide_grey(DEMO_SLIDE)
    mask, scale = tissue_mask(open_slide(DEMO_SLIDE))
    assert prob.shape == grey.shape and summary["mpp"] == pytest.approx(0.499)
    covered = prob > 0
    assert covered.mean() > 0.3
    np.testing.assert_allclose(prob[covered], grey[covered], atol=1e-5)
