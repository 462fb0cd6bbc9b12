"""Evaluation figures on geometry: every orientation is shown the same way up, structures outlined."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.evaluate.plots import OKABE_ITO, axial_view, modality_name, overlay_montage

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
    rgb = rendered["LSA"]
    # both label outlines drawn in their Okabe-Ito colours
    for hex_colour in OKABE_ITO[:2]:
        colour = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        assert (np.abs(rgb - colour).max(axis=-1) < 0.08).sum() > 20, hex_colour
    shifted = tmp_path / "pred.nii.gz"  # prediction 3 voxels to the patient's left, stored LSA
    sitk.WriteImage(sitk.DICOMOrient(_lps(np.roll(_scene()[1], 3, axis=2)), "LSA"), str(shifted))
    overlay_montage([(f"{c}", f["t1ce"], f["seg"], shifted if c == "LSA" else f["seg"], 0.8) for c, f in cases.items()],
                    tmp_path / "three.png", structure="lesion")
    assert (tmp_path / "three.png").stat().st_size > 5000


def test_modality_names():
    assert modality_name("a/BraTS2021_00000_t1ce.nii.gz") == "t1ce"
    assert modality_name("BraTS-GLI-00000-000-t2f.nii.gz") == "t2f"
    assert modality_name(("imagesTr/brain_001.nii.gz", 2)) == "brain_001 channel 2"
    assert modality_name(("x/BraTS2021_00004_t1ce.nii.gz", None)) == "t1ce"
