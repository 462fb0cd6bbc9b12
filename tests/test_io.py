"""One checked reader for images and label maps (medseg.io): each defect is built in a file,
shown to pass SimpleITK silently, and then refused with a message naming the case, the file and
the check. Also the one "same grid" test (grid_differences)."""
from __future__ import annotations

import gzip
import struct

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.io import (
    GRID_TOLERANCE_VOXELS,
    Grid,
    InputError,
    check_header,
    grid_differences,
    read_image,
    read_labels,
)

CASE = "BraTS2021_00042"


def labels_zyx(shape=(12, 16, 20)) -> np.ndarray:
    """A label map with enough texture that gzip cannot squeeze it into a few bytes."""
    rng = np.random.default_rng(0)
    lab = np.zeros(shape, np.uint8)
    lab[2:10, 3:13, 4:16] = rng.choice([1, 2, 4], size=(8, 10, 12)).astype(np.uint8)
    return lab


def write_nifti(path, arr_xyz, affine=None):
    nib.save(nib.Nifti1Image(arr_xyz, np.eye(4) if affine is None else affine), str(path))
    return path


def test_truncated_label_map_is_an_error_not_zeros(tmp_path):
    path = tmp_path / f"{CASE}_seg.nii.gz"
    lab = labels_zyx((40, 48, 48))
    sitk.WriteImage(sitk.GetImageFromArray(lab), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    silent = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert (silent == 0).sum() > (lab == 0).sum()  # what used to be scored: the lost half as background
    with pytest.raises(InputError, match=rf"case '{CASE}', file .*{CASE}_seg\.nii\.gz: .*truncated gzip data"):
        read_labels(path, case=CASE)


def test_uncompressed_file_named_nii_gz_says_so(tmp_path):
    raw = write_nifti(tmp_path / "x.nii", labels_zyx().T)
    path = tmp_path / f"{CASE}_seg.nii.gz"
    path.write_bytes(raw.read_bytes())
    assert sitk.ReadImage(str(path)).GetSize() == (20, 16, 12)  # SimpleITK does not mind; nibabel, FSL ... do
    msg = rf"case '{CASE}', file .*{CASE}_seg\.nii\.gz: not gzip-compressed although named \.nii\.gz; rename it to {CASE}_seg\.nii$"
    with pytest.raises(InputError, match=msg):
        read_labels(path, case=CASE)
    with pytest.raises(InputError, match=msg):
        read_image(path, case=CASE, source=True)
    with pytest.raises(InputError, match=msg):
        check_header(path, CASE)


def test_float_label_map_is_an_error_not_truncated(tmp_path):
    lab = labels_zyx().astype(np.float32)
    lab[lab == 1] = 0.9999
    lab[lab == 2] = 2.0001
    path = write_nifti(tmp_path / f"{CASE}_seg.nii.gz", lab.T)
    assert int(0.9999) == 0  # the truncation the case sheet used to apply
    with pytest.raises(InputError, match=rf"case '{CASE}', file .*{CASE}_seg\.nii\.gz: .*non-integer values \(e\.g\. 0\.9999, 2\.0001\)"):
        read_labels(path, case=CASE)
    # float64 labels 1 + 1e-9: equal to 1 once cast to float32, so they passed; read in their own type now
    lab64 = labels_zyx().astype(np.float64)
    lab64[lab64 == 1] = 1 + 1e-9
    path64 = write_nifti(tmp_path / "f64_seg.nii.gz", lab64.T)
    assert np.array_equal(np.unique(sitk.GetArrayFromImage(sitk.Cast(sitk.ReadImage(str(path64)), sitk.sitkFloat32))), [0, 1, 2, 4])
    with pytest.raises(InputError, match=r"f64_seg\.nii\.gz: .*non-integer values \(e\.g\. 1\)"):
        read_labels(path64, case=CASE)
    nan = labels_zyx().astype(np.float32)
    nan[5, 5, 5] = np.nan
    with pytest.raises(InputError, match=r"nan_seg\.nii\.gz: 1 voxels are NaN or infinite"):
        read_labels(write_nifti(tmp_path / "nan_seg.nii.gz", nan.T), case=CASE)
    with pytest.raises(InputError, match=r"neg_seg\.nii\.gz: label map values must be integers in \[0, 255\], got -1\.\.4"):
        read_labels(write_nifti(tmp_path / "neg_seg.nii.gz", (labels_zyx().astype(np.int16) - (labels_zyx() == 0)).T),
                    case=CASE)


def _with_pixdim(tmp_path, name, value, sform: bool):
    """A NIfTI whose stored pixdim[2] is ``value`` (nibabel itself would never write 0 or NaN)."""
    img = nib.Nifti1Image(labels_zyx().T, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    img.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]) if sform else None, code=2 if sform else 0)
    raw = tmp_path / f"{name}.nii"
    nib.save(img, str(raw))
    data = bytearray(raw.read_bytes())
    struct.pack_into("<f", data, 76 + 4 * 2, value)  # pixdim[2]: the y voxel size
    out = tmp_path / f"{name}.nii.gz"
    out.write_bytes(gzip.compress(bytes(data)))
    return out


@pytest.mark.parametrize("value", [0.0, float("nan")])
@pytest.mark.parametrize("sform", [False, True])
def test_zero_or_nan_voxel_size_is_refused_not_read_as_1mm(tmp_path, value, sform):
    path = _with_pixdim(tmp_path, f"{CASE}_seg", value, sform)
    assert sitk.ReadImage(str(path)).GetSpacing()[1] == 1.0  # the silent 1 mm
    msg = rf"case '{CASE}', file .*{CASE}_seg\.nii\.gz: voxel size \(NIfTI pixdim\) is \[2\.0, {value}, 2\.0\] mm"
    with pytest.raises(InputError, match=msg):
        read_labels(path, case=CASE)
    with pytest.raises(InputError, match=msg):
        read_image(path, case=CASE)  # the workflow's own reads too: the check is on the header, it costs nothing
    with pytest.raises(InputError, match=msg):
        check_header(path, CASE)


def test_sheared_affine_says_sheared(tmp_path):
    affine = np.eye(4)
    affine[0, 1] = 0.3
    path = write_nifti(tmp_path / f"{CASE}_t1.nii.gz", np.random.default_rng(0).random((20, 16, 12)).astype(np.float32), affine)
    with pytest.raises(InputError, match=rf"case '{CASE}', file .*{CASE}_t1\.nii\.gz: the affine is sheared \(its axes are not orthonormal"):
        read_image(path, case=CASE, source=True)
    with pytest.raises(InputError, match="sheared"):
        read_labels(path, case=CASE)
    # a rotated (oblique, not sheared) affine is fine
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0, 5], [s, c, 0, -3], [0, 0, 1, 7], [0, 0, 0, 1.0]])
    ok = write_nifti(tmp_path / "oblique_seg.nii.gz", labels_zyx().T, rot)
    assert read_labels(ok, case=CASE).GetSize() == (20, 16, 12)


@pytest.mark.parametrize("constant", [0.0, 37.5])
def test_blank_source_scan_is_an_error_naming_case_and_file(tmp_path, constant):
    path = tmp_path / f"{CASE}_flair.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 16, 16), constant, np.float32)), str(path))
    with pytest.raises(InputError, match=rf"case '{CASE}', file .*{CASE}_flair\.nii\.gz: every voxel is {constant:g}: a blank scan"):
        read_image(path, case=CASE, source=True)
    assert read_image(path, case=CASE).GetSize() == (16, 16, 8)  # an intermediate file may be constant (a unit field)
    empty = tmp_path / f"{CASE}_seg.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 16, 16), np.uint8)), str(empty))
    assert not sitk.GetArrayViewFromImage(read_labels(empty, case=CASE)).any()  # a label map without tumour is fine


def test_two_d_image_is_named_as_such(tmp_path):
    """A 2-D slice whose affine puts it in a sagittal plane: SimpleITK's 2-D reader fails on the
    3-D direction ("-1 -0"); the header says what it is first."""
    sag = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])
    path = write_nifti(tmp_path / f"{CASE}_seg.nii.gz", labels_zyx()[5].T.copy(), sag)
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(path))
    with pytest.raises(InputError, match=rf"case '{CASE}', file .*: expected a 3-D image, got 2-D with size \(20, 16\)"):
        read_labels(path, case=CASE)


def test_check_header_reads_the_grid_only(tmp_path):
    path = tmp_path / "t1.nii.gz"
    img = sitk.GetImageFromArray(np.random.default_rng(0).random((40, 48, 48)).astype(np.float32))
    img.SetSpacing((0.9, 1.1, 3.0))
    img.SetOrigin((-10.0, 5.0, 2.5))
    sitk.WriteImage(img, str(path))
    grid = check_header(path, CASE)
    assert grid.size == (48, 48, 40) and not grid_differences(grid, Grid.of(img))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not grid_differences(check_header(path, CASE), img)  # header level: the voxels are not read
    with pytest.raises(InputError, match="truncated"):
        read_image(path, case=CASE, source=True)
    with pytest.raises(InputError, match=r"case 'c', file .*nothere\.nii\.gz: does not exist"):
        check_header(tmp_path / "nothere.nii.gz", "c")


def _grid(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), size=(240, 240, 155)):
    return Grid(tuple(size), tuple(map(float, spacing)), tuple(map(float, origin)), tuple(map(float, direction)))


def test_one_tolerance_for_same_grid():
    """Within 1 % of a voxel anywhere in the grid is the same grid; a voxel centre moved further is not."""
    assert GRID_TOLERANCE_VOXELS == 0.01
    ref = _grid()
    assert grid_differences(ref, ref) == []
    assert grid_differences(_grid(origin=(0.0, 0.005, 0.0)), ref) == []  # 5 micrometres at 1 mm voxels
    assert grid_differences(_grid(origin=(0.0, 0.05, 0.0)), ref) == ["origin (mm) (0.0, 0.05, 0.0) vs (0.0, 0.0, 0.0)"]
    # spacing: 1e-4 mm per voxel adds up to 0.024 mm over 240 voxels
    assert [d.split(" (")[0] for d in grid_differences(_grid(spacing=(1.0001, 1.0, 1.0)), ref)] == ["spacing"]
    assert grid_differences(_grid(spacing=(1.00001, 1.0, 1.0)), ref) == []
    # direction: a 1e-3 rad rotation moves the far corner by 0.24 mm; float32 storage (1e-7) does not count
    e = 1e-3
    assert [d.split(" (")[0] for d in grid_differences(_grid(direction=(1, -e, 0, e, 1, 0, 0, 0, 1)), ref)] == ["direction"]
    assert grid_differences(_grid(direction=(1, -1e-7, 0, 1e-7, 1, 0, 0, 0, 1)), ref) == []
    assert grid_differences(_grid(size=(240, 240, 154)), ref) == ["size (240, 240, 154) vs (240, 240, 155)"]
    assert grid_differences(_grid(origin=(float("nan"), 0, 0)), ref)  # NaN is never "the same"
    # the tolerance scales with the voxel: 0.005 mm is 1 % of a 0.5 mm voxel
    fine = _grid(spacing=(0.5, 0.5, 0.5))
    assert grid_differences(_grid(spacing=(0.5, 0.5, 0.5), origin=(0.004, 0, 0)), fine) == []
    assert grid_differences(_grid(spacing=(0.5, 0.5, 0.5), origin=(0.006, 0, 0)), fine)


def test_grid_of_images_written_and_read_back(tmp_path):
    """An oblique grid survives NIfTI's float32 storage as "the same grid"."""
    img = sitk.Image([48, 40, 32], sitk.sitkUInt8)
    img.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.3, -1.2, 2.9).GetMatrix())
    img.SetOrigin((-120.25, 97.3, 33.3))
    img.SetSpacing((0.94, 0.94, 3.3))
    sitk.WriteImage(img, str(tmp_path / "a.nii.gz"))
    back = read_labels(tmp_path / "a.nii.gz")
    assert back.GetOrigin() != img.GetOrigin()  # float32 moved it a little
    assert grid_differences(back, img) == []


def test_zero_spacing_in_other_formats(tmp_path):
    """MHA with ElementSpacing 0: was "cannot be read (corrupt or truncated?): Refusing to change spacing"."""
    path = tmp_path / f"{CASE}_seg.mha"
    sitk.WriteImage(sitk.GetImageFromArray(labels_zyx()), str(path))
    path.write_bytes(path.read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 0 1"))
    with pytest.raises(RuntimeError, match="Zero-valued spacing"):
        sitk.ReadImage(str(path))
    with pytest.raises(InputError, match=rf"case '{CASE}', file .*_seg\.mha: voxel size \(1\.0, 0\.0, 1\.0\) mm: every voxel size must be finite and > 0"):
        read_labels(path, case=CASE)


def test_garbage_named_nii_gz_is_corrupt_not_misnamed(tmp_path):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match=r"file .*bad\.nii\.gz: cannot be read \(corrupt or truncated\?\): not gzip data"):
        read_image(path)


def test_vector_image_is_3d(tmp_path):
    """A displacement field is stored as NIfTI (x, y, z, 1, 3): a 3-D image with 3 components."""
    from medseg.io import write_image

    field = sitk.Image([8, 9, 10], sitk.sitkVectorFloat32, 3)
    write_image(field, tmp_path / "warp.nii.gz")
    assert nib.load(str(tmp_path / "warp.nii.gz")).shape == (8, 9, 10, 1, 3)
    assert read_image(tmp_path / "warp.nii.gz", pixel_type=sitk.sitkVectorFloat32).GetSize() == (8, 9, 10)
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((6, 8, 8), np.float32))] * 3)
    sitk.WriteImage(four_d, str(tmp_path / "four.nii.gz"))
    with pytest.raises(InputError, match=r"expected a 3-D image, got 4-D with size \(8, 8, 6, 3\)"):
        read_image(tmp_path / "four.nii.gz")
