"""QC figures: display orientation is anatomical whatever the direction matrix; PNGs are written and sane."""
from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.preprocess import qc

SIZE_LPS = (40, 48, 36)  # voxels along x (-> L), y (-> P), z (-> S)
SPACING_LPS = (1.0, 1.0, 2.5)  # mm
# LPS world axis and sign of each orientation letter
_AXIS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def phantom_xyz() -> np.ndarray:
    """A 'brain' sphere with a nose (anterior), a left ear and a crown (superior), indexed [x, y, z] in LPS."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SIZE_LPS), indexing="ij")
    c = np.array(SIZE_LPS) // 2
    r2 = sum(((g - ci) * s) ** 2 for g, ci, s in zip((x, y, z), c, SPACING_LPS))
    vol = np.where(r2 <= 15.0 ** 2, 1.0 + 0.2 * np.sin(x / 3.0), 0.0)
    vol[18:23, 2:7, 16:21] = 2.0  # nose: small y = anterior
    vol[35:40, 22:27, 16:21] = 3.0  # left ear: large x = patient's left
    vol[18:23, 22:27, 32:36] = 4.0  # crown: large z = superior
    return vol.astype(np.float32)


def make_image(vol_xyz: np.ndarray, code: str) -> sitk.Image:
    """The same physical object on a grid whose axes point along ``code`` (e.g. "RAS", "LSA")."""
    perm = [_AXIS[ch][0] for ch in code]
    signs = [_AXIS[ch][1] for ch in code]
    if sorted(perm) != [0, 1, 2]:
        raise ValueError(f"code must name each axis once, got {code!r}")
    arr = np.transpose(vol_xyz, perm)
    direction = np.zeros((3, 3))
    corner = np.zeros(3)
    for i, (p, sg) in enumerate(zip(perm, signs)):
        direction[p, i] = sg
        if sg < 0:
            arr = np.flip(arr, i)
            corner[p] = SIZE_LPS[p] - 1
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))))
    img.SetSpacing([SPACING_LPS[p] for p in perm])
    img.SetDirection(direction.ravel().tolist())
    img.SetOrigin((corner * np.array(SPACING_LPS) + np.array([-20.0, 15.0, -40.0])).tolist())
    return img


@pytest.fixture(scope="module")
def images() -> dict[str, sitk.Image]:
    vol = phantom_xyz()
    return {code: make_image(vol, code) for code in ("LPS", "RAS", "LSA")}


def read_png(path) -> np.ndarray:
    img = mpimg.imread(str(path))
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01
    return img


def test_phantoms_are_one_object(images):
    # oracle independent of DICOMOrient: resampling each grid onto the LPS one gives the LPS voxels back
    ref = images["LPS"]
    for code, img in images.items():
        assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection()) == code
        back = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ref))


def test_canonical_slices_do_not_depend_on_orientation(images):
    planes = {code: qc.canonical_slices(img) for code, img in images.items()}
    for code in ("RAS", "LSA"):
        for a, b in zip(planes["LPS"], planes[code]):
            assert a.shape == b.shape
            assert np.allclose(a, b)
        assert qc.plane_aspects(images[code]) == pytest.approx((1.0, 2.5, 2.5))
    axial, coronal, sagittal = planes["LPS"]
    assert axial.shape == (48, 40) and coronal.shape == (36, 40) and sagittal.shape == (36, 48)


def test_display_is_anatomical(images):
    axial, coronal, sagittal = qc.canonical_slices(images["LSA"])
    # axial: nose up, patient's left on the right (radiological)
    assert (axial[:10] == 2).any() and not (axial[10:] == 2).any()
    assert (axial[:, -6:] == 3).any() and not (axial[:, :-6] == 3).any()
    # coronal: crown up, left on the right
    assert (coronal[:5] == 4).any() and not (coronal[5:] == 4).any()
    assert (coronal[:, -6:] == 3).any()
    # sagittal: crown up, nose on the left
    assert (sagittal[:5] == 4).any()
    assert (sagittal[:, :8] == 2).any() and not (sagittal[:, 8:] == 2).any()


def test_canonical_slices_through_a_world_point(images):
    # a point inside the left ear: every orientation's sagittal plane passes through it
    ear = images["LPS"].TransformIndexToPhysicalPoint((37, 24, 18))
    for img in images.values():
        _, _, sagittal = qc.canonical_slices(img, center_mm=ear)
        assert (sagittal == 3).any()
    far = qc.canonical_slices(images["RAS"], center_mm=(1e4, 1e4, 1e4))  # clamped to the grid's edge
    assert far[0].shape == (48, 40)


def test_checkerboard_oracles():
    a, b = np.zeros((4, 6, 6)), np.ones((4, 6, 6))
    np.testing.assert_array_equal(qc.checkerboard(a, b, (1.0, 1.0, 1.0), squares=1), a)
    board = qc.checkerboard(a, b, (1.0, 1.0, 1.0), squares=2)  # 3 mm cubes
    assert board[0, 0, 0] == 0 and board[0, 0, 3] == 1 and board[0, 3, 3] == 0 and board[3, 3, 3] == 1
    np.testing.assert_array_equal(qc.checkerboard(a + 5, a + 5, (1.0, 2.0, 3.0), squares=3), a + 5)
    anis = qc.checkerboard(np.zeros((2, 6, 6)), np.ones((2, 6, 6)), (3.0, 1.0, 1.0), squares=2)
    assert anis[0, 0, 0] == 0 and anis[1, 0, 0] == 1  # squares are cubes in mm: z flips every slice
    with pytest.raises(ValueError, match="squares"):
        qc.checkerboard(a, b, (1.0, 1.0, 1.0), squares=0)


@pytest.mark.parametrize("code", ["RAS", "LSA"])
def test_figures_are_written(images, code, tmp_path):
    img = images[code]
    shape = sitk.GetArrayViewFromImage(img).shape
    ramp = np.linspace(0.9, 1.1, img.GetNumberOfPixels(), dtype=np.float32).reshape(shape)
    field = sitk.GetImageFromArray(ramp)  # smooth multiplicative bias along the slowest axis
    field.CopyInformation(img)
    qc.n4_qc(img * field, img, field, tmp_path / "n4.png", title="n4")
    moved = sitk.Resample(img, img, sitk.TranslationTransform(3, (2.0, 0.0, 0.0)), sitk.sitkLinear)
    qc.registration_qc(img, moved, tmp_path / "reg.png", title="reg", squares=6)
    mask = sitk.Cast((img > 0.5) * (img < 1.5), sitk.sitkUInt8)
    ml = qc.mask_qc(img, mask, tmp_path / "mask.png", title="mask")
    assert ml == pytest.approx(sitk.GetArrayViewFromImage(mask).sum() * 2.5 / 1000)
    qc.montage_qc({"t1": img, "t2": 5.0 - img}, tmp_path / "montage.png", title="montage")
    qc.n4_qc(img * field, img, field, tmp_path / "n4_wm.png", title="n4", mask=mask, mask_name="deep WM")
    with pytest.raises(ValueError, match="mask"):
        qc.n4_qc(img * field, img, field, tmp_path / "bad.png", mask=sitk.Shrink(mask, [2, 2, 2]))
    for name in ("n4", "n4_wm", "reg", "mask", "montage"):
        read_png(tmp_path / f"{name}.png")
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
    montage = read_png(tmp_path / "montage.png")
    assert montage.shape[1] > montage.shape[0]


def test_empty_mask_and_constant_images(images, tmp_path, monkeypatch):
    titles = []
    save = qc._save
    monkeypatch.setattr(qc, "_save", lambda fig, out, title: (titles.append(title), save(fig, out, title)))
    img = images["LSA"]
    empty = sitk.Cast(img * 0, sitk.sitkUInt8)
    assert qc.mask_qc(img, empty, tmp_path / "empty.png", title="case") == 0.0
    assert "empty mask" in titles[-1]
    read_png(tmp_path / "empty.png")
    flat = sitk.Cast(img * 0 + 7.0, sitk.sitkFloat32)
    qc.n4_qc(flat, flat, flat * 0 + 1.0, tmp_path / "flat_n4.png")
    qc.registration_qc(img, flat, tmp_path / "flat_reg.png")
    qc.mask_qc(flat, sitk.Cast(img > 0.5, sitk.sitkUInt8), tmp_path / "flat_mask.png")
    qc.montage_qc({"flat": flat}, tmp_path / "flat_montage.png")
    for name in ("flat_n4", "flat_reg", "flat_mask", "flat_montage"):
        assert mpimg.imread(str(tmp_path / f"{name}.png")).shape[0] > 100


def test_bad_arguments(images, tmp_path):
    img = images["LPS"]
    with pytest.raises(ValueError, match="moving_resampled"):
        qc.registration_qc(img, images["RAS"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="squares"):
        qc.registration_qc(img, img, tmp_path / "x.png", squares=0)
    with pytest.raises(ValueError, match="mask"):
        qc.mask_qc(img, sitk.Cast(images["LSA"] > 0, sitk.sitkUInt8), tmp_path / "x.png")
    with pytest.raises(ValueError, match="images"):
        qc.montage_qc({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="img must be 3-D"):
        qc.canonical_slices(sitk.Image(8, 8, sitk.sitkFloat32))
    assert not (tmp_path / "x.png").exists()


def _atlas_cube() -> sitk.Image:
    arr = np.zeros((30, 30, 30), np.uint8)
    arr[10:20, 10:20, 10:20] = 1  # 1000 voxels of 2 mm = 8 mL on the atlas grid
    mask = sitk.GetImageFromArray(arr)
    mask.SetSpacing((2.0, 2.0, 2.0))
    return mask


def test_native_volume_through_the_affine_matches_resampling():
    mask = _atlas_cube()
    to_native = sitk.AffineTransform(3)
    to_native.SetMatrix((1.1, 0.05, 0, 0, 0.9, 0, 0, 0.1, 1.2))  # det 1.188
    to_native.SetCenter((30.0, 30.0, 30.0))
    assert qc.native_volume_ml(mask) == pytest.approx(8.0)
    ml = qc.native_volume_ml(mask, to_native)
    assert ml == pytest.approx(8.0 * 1.1 * 0.9 * 1.2, rel=1e-6)
    # oracle: resample the mask onto a fine native grid (native -> atlas = the inverse) and count
    native = sitk.Image((80, 80, 80), sitk.sitkUInt8)
    native.SetSpacing((1.0, 1.0, 1.0))
    native.SetOrigin((-10.0, -10.0, -10.0))
    resampled = sitk.Resample(mask, native, to_native.GetInverse(), sitk.sitkNearestNeighbor, 0)
    counted = float(sitk.GetArrayViewFromImage(resampled).sum()) / 1000.0
    assert ml == pytest.approx(counted, rel=0.03)


def test_native_volume_with_a_warp():
    mask = _atlas_cube()
    field = np.zeros((30, 30, 30, 3), np.float64)
    field[..., 0] = 0.1 * 2.0 * np.arange(30)[None, None, :]  # w_x = 0.1 x: det(I + dw/dx) = 1.1
    warp = sitk.GetImageFromArray(field, isVector=True)
    warp.CopyInformation(mask)
    identity = sitk.AffineTransform(3)
    assert qc.native_volume_ml(mask, identity, warp) == pytest.approx(8.0 * 1.1, rel=1e-3)
    zero = sitk.GetImageFromArray(np.zeros_like(field), isVector=True)
    zero.CopyInformation(mask)
    assert qc.native_volume_ml(mask, identity, zero) == pytest.approx(8.0)


def test_mask_qc_states_the_native_volume(tmp_path, monkeypatch):
    mask = _atlas_cube()
    image = sitk.Cast(mask, sitk.sitkFloat32) * 100.0 + 10.0
    scale = sitk.ScaleTransform(3, (1.25, 1.0, 1.0))
    titles = []
    monkeypatch.setattr(qc, "_save", lambda fig, out, title: titles.append(title))
    assert qc.mask_qc(image, mask, tmp_path / "m.png", title="c", to_native=scale) == pytest.approx(10.0)
    assert qc.mask_qc(image, mask, tmp_path / "m.png", title="c") == pytest.approx(8.0)
    assert "brain 10 mL in native space\n(atlas grid 8 mL x |det J|" in titles[0]
    assert "brain 8.0 mL (native space" in titles[1] or "brain 8 mL (native space" in titles[1]
