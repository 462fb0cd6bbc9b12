"""Evaluation figures on geometry: every orientation is shown the same way up, structures outlined."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.evaluate.plots import (ERROR_STYLE, axial_view, error_masks, error_rgba, modality_name,
                                  montage_structures, overlay_montage)

SHAPE_ZYX = (12, 30, 26)


def _lps(arr: np.ndarray, spacing=(1.0, 1.5, 2.5)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)  # x, y, z
    img.SetOrigin((-12.0, -20.0, 5.0))
    return img


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """An LPS grid (x -> patient's left, y -> posterior): a head with a marker at the anterior
    right, and a two-label lesion; returns (image, labels) as (z, y, x) arrays."""
    image = np.zeros(SHAPE_ZYX, np.float32)
    image[:, 3:27, 3:23] = 100.0
    image[:, 4:8, 4:8] = 400.0  # anterior (low y), patient's right (low x)
    labels = np.zeros(SHAPE_ZYX, np.uint8)
    labels[5:8, 12:20, 12:20] = 2
    labels[5:8, 14:18, 14:18] = 1
    return image, labels


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """The same scan written in LPS, RAS and LSA (axes permuted and flipped, one physical object)."""
    d = tmp_path_factory.mktemp("orient")
    image, labels = _scene()
    out = {}
    for code in ("LPS", "RAS", "LSA"):
        files = {}
        for name, arr in (("t1ce", image), ("seg", labels)):
            img = sitk.DICOMOrient(_lps(arr), code)
            assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection()) == code
            files[name] = d / f"case{code}_{name}.nii.gz"
            sitk.WriteImage(img, str(files[name]))
        out[code] = files
    return out


def test_every_orientation_shows_the_same_axial_slice_the_same_way_up(cases):
    views = {code: axial_view(sitk.ReadImage(str(f["t1ce"])), 6) for code, f in cases.items()}
    ref, aspect, _ = views["LPS"]
    assert aspect == pytest.approx(1.5)  # row (anterior-posterior) mm / column (right-left) mm
    for code in ("RAS", "LSA"):
        arr, asp, _ = views[code]
        np.testing.assert_array_equal(arr, ref)
        assert asp == pytest.approx(aspect)
    # oracle from the scene, not from the code: the marker is anterior-right -> top-left (radiological)
    h, w = ref.shape
    marker = np.argwhere(ref == 400.0)
    assert marker[:, 0].max() < h / 3 and marker[:, 1].max() < w / 3


def test_montage_of_lsa_and_ras_cases(cases, tmp_path):
    import matplotlib.image as mpimg

    rendered = {}
    for code, f in cases.items():  # one panel each, same title: the PNGs must be the same pixels
        png = tmp_path / f"{code}.png"
        overlay_montage([("best: case", f["t1ce"], f["seg"], f["seg"], 1.0)], png, structure="lesion",
                        label_names={1: "core", 2: "oedema"})
        rendered[code] = mpimg.imread(str(png))[..., :3]
    np.testing.assert_array_equal(rendered["RAS"], rendered["LPS"])
    np.testing.assert_array_equal(rendered["LSA"], rendered["LPS"])
    shifted = tmp_path / "pred.nii.gz"  # prediction 3 voxels to the patient's left, stored LSA
    sitk.WriteImage(sitk.DICOMOrient(_lps(np.roll(_scene()[1], 3, axis=2)), "LSA"), str(shifted))
    three = {}
    for name, pred in (("perfect", {}), ("shifted", {"LSA": shifted})):
        overlay_montage([(c, f["t1ce"], f["seg"], pred.get(c, f["seg"]), 0.8) for c, f in cases.items()],
                        tmp_path / f"{name}.png", structure="lesion")
        three[name] = {k: _colour_pixels(mpimg.imread(str(tmp_path / f"{name}.png"))[..., :3], k)
                       for k in ("missed", "extra")}
    # perfect predictions: missed and extra colours in the legend only; the shifted one adds both to its panels
    assert three["perfect"]["missed"] > 20 and three["perfect"]["extra"] > 20
    assert three["shifted"]["missed"] > three["perfect"]["missed"] + 50
    assert three["shifted"]["extra"] > three["perfect"]["extra"] + 50


def _colour_pixels(rgb: np.ndarray, kind: str) -> int:
    """Pixels of a rendered montage in the (opaque) colour of an error class (its legend's patch included)."""
    from matplotlib.colors import to_rgb

    colour, alpha = ERROR_STYLE[kind]
    assert alpha > 0.9  # missed and extra are (nearly) opaque: their colour is what the PNG shows
    return int((np.abs(rgb - np.array(to_rgb(colour))).max(axis=-1) < 0.06).sum())


def _nested(shape=(6, 20, 20)) -> tuple[np.ndarray, np.ndarray]:
    """BraTS 2021 labels: oedema (2) around a core (1 = NCR) around an enhancing centre (4); the
    prediction misses the NCR ring (it calls it oedema) and adds ET on a corner of the oedema."""
    ref = np.zeros(shape, np.uint8)
    ref[:, 4:16, 4:16] = 2
    ref[:, 7:13, 7:13] = 1
    ref[:, 9:11, 9:11] = 4
    pred = ref.copy()
    pred[pred == 1] = 2
    pred[:, 4:6, 4:6] = 4
    return ref, pred


REGIONS = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}


def test_error_masks_are_the_set_differences():
    ref, pred = _nested()
    for values in REGIONS.values():
        r, p = np.isin(ref, values), np.isin(pred, values)
        m = error_masks(ref, pred, values)
        np.testing.assert_array_equal(m["missed"], r & ~p)
        np.testing.assert_array_equal(m["extra"], p & ~r)
        np.testing.assert_array_equal(m["agreed"], r & p)
        rgba = error_rgba(m)
        for kind, (colour, alpha) in ERROR_STYLE.items():
            from matplotlib.colors import to_rgb

            painted = np.all(np.isclose(rgba, (*to_rgb(colour), alpha), atol=1e-6), axis=-1)
            np.testing.assert_array_equal(painted, m[kind])  # each voxel class in its colour, nothing else
        assert (rgba[..., 3][~(r | p)] == 0).all()
    # by hand, per slice: TC misses the NCR ring (36 - 4 = 32 voxels) that ET does not see; ET gains 4
    slice_ = {n: {k: int(v[0].sum()) for k, v in error_masks(ref, pred, vals).items()} for n, vals in REGIONS.items()}
    assert slice_["WT"] == {"agreed": 144, "missed": 0, "extra": 0}
    assert slice_["TC"] == {"agreed": 4, "missed": 32, "extra": 4}
    assert slice_["ET"] == {"agreed": 4, "missed": 0, "extra": 4}


def test_montage_rows_are_the_nested_regions_each_in_its_panel(tmp_path, monkeypatch):
    import matplotlib.image as mpimg

    from medseg.evaluate import plots

    ref, pred = _nested()
    image = np.random.default_rng(0).random(ref.shape).astype(np.float32)
    files = {}
    for name, arr in (("t1ce", image), ("seg", ref), ("pred", pred)):
        files[name] = tmp_path / f"c_{name}.nii.gz"
        sitk.WriteImage(_lps(arr), str(files[name]))
    assert list(montage_structures([ref, pred], REGIONS)) == ["WT", "TC", "ET"]
    assert list(montage_structures([ref, pred], None, {1: "NCR"})) == ["NCR", "label 2", "label 4"]
    drawn = []
    draw = plots._draw_panel
    monkeypatch.setattr(plots, "_draw_panel", lambda ax, view, aspect, masks, title: (
        drawn.append(({k: int(v.sum()) for k, v in masks.items()}, title)), draw(ax, view, aspect, masks, title)))
    out = tmp_path / "m.png"
    overlay_montage([("worst: c", files["t1ce"], files["seg"], files["pred"], 0.95),
                     ("best: c", files["t1ce"], files["seg"], files["seg"], 1.0)], out, structure="WT",
                    structures=REGIONS)
    assert len(drawn) == 6  # 3 rows (WT, TC, ET) x 2 columns (cases)
    worst, best = drawn[:3], drawn[3:]  # column by column: column 0 is the worst case
    assert [c for c, _ in worst] == [{"agreed": 144, "missed": 0, "extra": 0}, {"agreed": 4, "missed": 32, "extra": 4},
                                     {"agreed": 4, "missed": 0, "extra": 4}]
    assert all(c["missed"] == c["extra"] == 0 for c, _ in best)
    tc = 2 * 4 * 6 / (36 * 6 + 8 * 6)  # the case's 3-D TC Dice: 4 agreed voxels of 36 and 8 per slice
    assert "WT Dice 0.950" in worst[0][1] and f"TC Dice {tc:.3f}" in worst[1][1] and "ET Dice 0.667" in worst[2][1]
    assert worst[0][1].startswith("worst: c\nt1ce, axial slice")
    rgb = mpimg.imread(str(out))[..., :3]
    overlay_montage([("worst: c", files["t1ce"], files["seg"], files["seg"], 0.95),  # the same layout, no error
                     ("best: c", files["t1ce"], files["seg"], files["seg"], 1.0)], tmp_path / "none.png", structure="WT",
                    structures=REGIONS)
    legend = mpimg.imread(str(tmp_path / "none.png"))[..., :3]
    assert _colour_pixels(rgb, "missed") > _colour_pixels(legend, "missed") + 100  # the 32 missed TC voxels
    assert _colour_pixels(rgb, "extra") > _colour_pixels(legend, "extra") + 20


def test_modality_names():
    assert modality_name("a/BraTS2021_00000_t1ce.nii.gz") == "t1ce"
    assert modality_name("BraTS-GLI-00000-000-t2f.nii.gz") == "t2f"
    assert modality_name(("imagesTr/brain_001.nii.gz", 2)) == "brain_001 channel 2"
    assert modality_name(("x/BraTS2021_00004_t1ce.nii.gz", None)) == "t1ce"


def test_lesion_window_zooms_on_the_lesion():
    from medseg.evaluate.plots import lesion_window

    mask = np.zeros((100, 80), bool)
    mask[40:50, 30:36] = True  # 10 x 6 voxels, centre (44, 32)
    rows, cols = lesion_window(mask, zoom=2.0, pad=6)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (29, 60, 17, 48)  # half 9 + 6 = 15 around the centre
    assert mask[rows, cols].sum() == mask.sum()
    edge = np.zeros((30, 30), bool)
    edge[0:4, 26:30] = True  # at a corner: the window slides inside the slice, same size
    r, c = lesion_window(edge, zoom=2.0, pad=6)
    assert (r.start, r.stop, c.start, c.stop) == (0, 19, 11, 30) and edge[r, c].sum() == 16
    assert lesion_window(np.zeros((5, 7), bool)) == (slice(0, 5), slice(0, 7))


def test_training_curves_colour_blind_safe_and_the_kept_step(tmp_path):
    import matplotlib.image as mpimg
    from matplotlib.colors import to_rgb

    from medseg.training.curves import CURVE_COLOURS, best_step, kept_score, plot_curves

    history = [{"step": s, "loss": 1.0 / s} for s in range(1, 101)]
    for s, (wt, tc, et) in {20: (0.5, 0.4, 0.2), 40: (0.8, 0.6, 0.5), 60: (0.9, 0.7, 0.5), 80: (0.9, 0.7, 0.5),
                            100: (0.85, 0.7, 0.5)}.items():
        history[s - 1].update(dice_WT=wt, dice_TC=tc, dice_ET=et, dice_mean=(wt + tc + et) / 3)
    # kept: the best exponential moving average (nnU-Net's: 0.9 ema + 0.1 Dice) of the mean Dice:
    # 0.3667, 0.3933, 0.4240, 0.4516, 0.4748
    assert best_step(history)["step"] == 100 and kept_score(history) == pytest.approx(0.4748, abs=1e-4)
    collapse = [{"step": s, "loss": 1.0, "dice_mean": d} for s, d in ((1, 0.5), (2, 0.9), (3, 0.2), (4, 0.2))]
    assert best_step(collapse)["step"] == 2  # ema 0.5, 0.54, 0.506, 0.4754: a collapse keeps the earlier weights
    assert best_step(history[:10]) is None and kept_score(history[:10]) == -1
    plot_curves(history, tmp_path / "curves.png", ("WT", "TC", "ET"))
    rgb = mpimg.imread(str(tmp_path / "curves.png"))[..., :3]

    def pixels(colour) -> int:
        return int((np.abs(rgb - np.array(to_rgb(colour))).max(axis=-1) < 0.05).sum())

    assert all(pixels(c) > 30 for c in CURVE_COLOURS[:3])  # one Okabe-Ito colour per structure
    assert pixels("#d62728") == 0 == pixels("#2ca02c")  # not matplotlib's default red and green
    greens = [c for c in CURVE_COLOURS[:3] if to_rgb(c)[1] > max(to_rgb(c)[0], to_rgb(c)[2])]
    reds = [c for c in CURVE_COLOURS[:3] if to_rgb(c)[0] > 0.8 and to_rgb(c)[1] < 0.5]
    assert not (greens and reds)  # no red/green pair among the structures of a BraTS task
