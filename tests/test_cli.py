"""The medseg CLI on plain files, as users and outside checks call it."""
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cli import main


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("synth-cohort", "case-sheet", "n4", "register", "skullstrip", "predict", "evaluate", "stitch-slide", "tracking-sync"):
        assert cmd in out


def test_n4_register_skullstrip_on_files(demo_case, tmp_path):
    assert main(["n4", str(demo_case["t1"]), "--out", str(tmp_path / "n4.nii.gz"), "--bias-field", str(tmp_path / "b.nii.gz")]) == 0
    assert sitk.ReadImage(str(tmp_path / "b.nii.gz")).GetSize() == sitk.ReadImage(str(demo_case["t1"])).GetSize()
    assert main(["register", str(demo_case["t2"]), str(demo_case["t1ce"]), "--out", str(tmp_path / "r.nii.gz"),
                 "--transform", str(tmp_path / "r.tfm"), "--kind", "rigid"]) == 0
    assert isinstance(sitk.ReadTransform(str(tmp_path / "r.tfm")), sitk.Transform)
    assert main(["skullstrip", str(tmp_path / "n4.nii.gz"), "--out-mask", str(tmp_path / "m.nii.gz")]) == 0
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m.nii.gz")))
    assert set(np.unique(mask)) == {0, 1}


def test_bad_input_exits_2_with_message(tmp_path, capfd):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    assert main(["n4", str(bad), "--out", str(tmp_path / "o.nii.gz")]) == 2
    assert "cannot be read" in capfd.readouterr().err and not (tmp_path / "o.nii.gz").exists()
