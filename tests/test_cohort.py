"""Case discovery (BraTS 2021 / 2023, nnU-Net raw, Decathlon layouts), splits, and the validated case sheet."""
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cohort.listing import list_cases
from medseg.cohort.sheet import case_row, plan_sheet, read_case_sheet, read_task, sheet_problems
from medseg.cohort.splits import assign_splits, fold_cases, held_out_cases
from medseg.io import InputError
from medseg.tasks.layouts.base import check_case_id
from medseg.tasks.layouts import detect_layout

MODS = ("t1", "t1ce", "t2", "flair")
SUFFIX = {"brats2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
          "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"}}


def write(path, arr, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def make_case(root, case, layout="brats2021", labels=(0, 1, 2, 4), shape=(6, 8, 8), skip=(), seg_shape=None):
    rng = np.random.default_rng(0)
    for key, suf in SUFFIX[layout].items():
        if key in skip:
            continue
        if key == "seg":
            seg = np.zeros(seg_shape or shape, np.uint8)
            seg.flat[: len(labels)] = labels
            write(root / case / f"{case}{suf}.nii.gz", seg)
        else:
            write(root / case / f"{case}{suf}.nii.gz", rng.random(shape).astype(np.float32))


def sheet(root, out, convention="auto", splits=None, **kw):
    """Discover ``root`` and write its case sheet; return (rows, plan, task)."""
    from dataclasses import replace

    plan = list_cases(root.name, {"source": str(root), "convention": convention,
                                    "split": {"test_fraction": 0.25, "val_fraction": 0.34}})
    rows = plan_sheet(replace(plan, splits=splits) if splits else plan, out, out.with_suffix(".json"), **kw)
    return rows, plan, read_task(out.with_suffix(".json"))


@pytest.mark.parametrize("layout,labels,conv", [("brats2021", (0, 1, 2, 4), "2021"), ("brats2023", (0, 1, 2, 3), "2023")])
def test_layouts_and_convention_detection(tmp_path, layout, labels, conv):
    root = tmp_path / "data"
    for c in ("A-001", "A-002", "A-003", "A-004"):
        make_case(root, c, layout, labels)
    make_case(root, "A-005", layout, (0, 1, 2))  # no ET: fits both conventions, takes the dataset's
    (root / "notes.txt").write_text("not a case")
    assert detect_layout(root) == "brats"
    rows, plan, task = sheet(root, tmp_path / "cases.tsv")
    assert list(plan.cases) == ["A-001", "A-002", "A-003", "A-004", "A-005"] and plan.ignored == ("notes.txt",)
    assert all(r["convention"] == conv and not r["problem"] for r in rows)
    assert task.preset == f"brats{conv}" and task.labels["ET"] == (4 if conv == "2021" else 3)
    assert set(read_case_sheet(tmp_path / "cases.tsv")) == set(plan.cases)


def test_sheet_records_problems_per_case(tmp_path):
    root = tmp_path / "data"
    make_case(root, "good", labels=(0, 1, 2, 4))
    make_case(root, "good2", labels=(0, 1, 2, 4))
    make_case(root, "nomod", skip=("flair",))
    make_case(root, "badlab", labels=(0, 1, 3, 4))
    make_case(root, "grid", seg_shape=(5, 8, 8))
    make_case(root, "trunc")
    t1 = root / "trunc" / "trunc_t1.nii.gz"
    t1.write_bytes(t1.read_bytes()[:40])
    make_case(root, "c23", layout="brats2023", labels=(0, 1, 2, 3))  # the other convention in a 2021 dataset
    splits = {c: {"split": "train", "fold": None} for c in ("badlab", "c23", "good", "good2", "grid", "trunc")}
    _, plan, _ = sheet(root, tmp_path / "cases.tsv", splits=splits)
    out = tmp_path / "cases.tsv"
    assert case_row(out, "good")["convention"] == "2021"
    assert "missing flair" in plan.excluded["nomod"]  # found by discovery, listed in the sheet too
    assert read_case_sheet(out)["nomod"]["split"] == "excluded"
    for case, msg in [("badlab", "fit neither"), ("grid", "resample all modalities"), ("trunc", "cannot be read"),
                      ("c23", "BraTS 2023 labels but the dataset is BraTS 2021")]:
        with pytest.raises(InputError, match=msg) as e:
            case_row(out, case)
        assert case in str(e.value)


def test_no_case_vanishes_without_a_record(tmp_path):
    """Issue 14: folders and files that make no usable case are listed with their reason; other
    file types and case-insensitive extensions are read; a bad id blocks only its own case."""
    root = tmp_path / "data"
    make_case(root, "ok-1")
    make_case(root, "ok-2", layout="brats2023", labels=(0, 1, 2))  # the other layout: read per case
    make_case(root, "noref", skip=("t1ce",))
    (root / "empty").mkdir()
    make_case(root, "with space")
    make_case(root, "mgz")
    for p in (root / "mgz").iterdir():
        p.rename(p.with_name(p.name.replace(".nii.gz", ".mgz")))
    make_case(root, "upper")
    for p in (root / "upper").iterdir():
        p.rename(p.with_name(p.name.replace(".nii.gz", ".NII.GZ")))
    make_case(root, "plain")
    for p in (root / "plain").iterdir():
        sitk.WriteImage(sitk.ReadImage(str(p)), str(p.with_name(p.name.replace(".nii.gz", ".mha"))))
        p.unlink()
    rows, plan, _ = sheet(root, tmp_path / "cases.tsv")
    assert set(plan.cases) == {"ok-1", "ok-2", "upper", "plain"}
    assert "missing t1ce" in plan.excluded["noref"]
    assert "is empty" in plan.excluded["empty"]
    assert "not allowed" in plan.excluded["with space"]
    assert "unsupported file type" in plan.excluded["mgz"] and ".mgz" in plan.excluded["mgz"]
    assert not any(r["problem"] for r in rows if r["split"] != "excluded")
    listed = read_case_sheet(tmp_path / "cases.tsv")
    assert set(listed) == set(plan.cases) | set(plan.excluded)


def test_folder_that_fits_no_layout_says_what_it_expected(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match=r"fits no known layout: expected dataset.json .*_t1ce.nii.gz"):
        detect_layout(tmp_path)


def test_nnunet_layout_labels_regions_and_unlabelled_cases(tmp_path):
    import json

    root = tmp_path / "Dataset042_Prostate"
    rng = np.random.default_rng(0)
    for sub, cases in (("imagesTr", ["p1", "p2", "p3", "p4"]), ("imagesTs", ["q1"])):
        for c in cases:
            for ch in range(2):
                write(root / sub / f"{c}_{ch:04d}.nii.gz", rng.random((6, 8, 8)).astype(np.float32))
            if sub == "imagesTr":
                seg = np.zeros((6, 8, 8), np.uint8)
                seg[2:4, 2:5, 2:5] = 1
                seg[3, 3, 3] = 2
                write(root / "labelsTr" / f"{c}.nii.gz", seg)
    write(root / "imagesTr" / "p5_0000.nii.gz", rng.random((6, 8, 8)).astype(np.float32))  # channel 1 missing
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2", "1": "ADC"},
                                                   "labels": {"background": 0, "PZ": 1, "TZ": 2},
                                                   "numTraining": 4, "file_ending": ".nii.gz"}))
    assert detect_layout(root) == "nnunet"
    rows, plan, task = sheet(root, tmp_path / "cases.tsv")
    assert task.modalities == ("t2", "adc") and task.labels == {"PZ": 1, "TZ": 2} and task.target_kind == "labels"
    assert plan.unlabelled_cases() == ["q1"] and "p5_0001.nii.gz" in plan.excluded["p5"]
    assert not any(r["problem"] for r in rows if r["split"] != "excluded")
    # labels outside the task's definition: an error naming case and file, never remapped
    seg = np.zeros((6, 8, 8), np.uint8)
    seg[1, 1, 1] = 5
    write(root / "labelsTr" / "p2.nii.gz", seg)
    sheet(root, tmp_path / "cases2.tsv")
    with pytest.raises(InputError, match=r"case p2, file .*p2.nii.gz: label values \[5\] are not in the task"):
        case_row(tmp_path / "cases2.tsv", "p2")


def test_decathlon_layout_reads_channels_of_4d_images(tmp_path):
    import json

    from medseg.cohort.sources import read_source

    import nibabel as nib

    root = tmp_path / "Task05_Prostate"
    rng = np.random.default_rng(1)
    training = []

    def write4d(path):  # (x, y, z, channel), as the Decathlon ships multi-modal scans
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(rng.random((8, 8, 6, 2)).astype(np.float32), np.eye(4)), str(path))

    for c in ("prostate_00", "prostate_01", "prostate_02", "prostate_04"):
        write4d(root / "imagesTr" / f"{c}.nii.gz")
        seg = np.zeros((8, 8, 6), np.uint8)
        seg[2:4, 2:5, 2:5] = 2
        (root / "labelsTr").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(seg, np.eye(4)), str(root / "labelsTr" / f"{c}.nii.gz"))
        training.append({"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"})
    write4d(root / "imagesTs/prostate_03.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "T2", "1": "ADC"},
                                                   "labels": {"0": "background", "1": "PZ", "2": "TZ"},
                                                   "training": training, "test": ["./imagesTs/prostate_03.nii.gz"]}))
    assert detect_layout(root) == "msd"
    rows, plan, task = sheet(root, tmp_path / "cases.tsv")
    assert task.modalities == ("t2", "adc") and task.labels == {"PZ": 1, "TZ": 2}
    assert plan.unlabelled_cases() == ["prostate_03"] and not any(r["problem"] for r in rows)
    f = plan.files["prostate_01"]
    assert f.channels == {"t2": 0, "adc": 1} and f.images["t2"] == f.images["adc"]
    adc = read_source(f.images["adc"], "prostate_01", 1)
    arr4 = sitk.GetArrayFromImage(sitk.ReadImage(f.images["adc"]))
    assert adc.GetDimension() == 3 and np.array_equal(sitk.GetArrayFromImage(adc), arr4[1])


def test_full_validation_reads_every_voxel(tmp_path):
    """Damage past an intact header (truncated gzip data, NaN/inf voxels) is found by the sheet
    reading each image whole; a header-only sheet cannot see it. Threads keep the case order."""
    import gzip

    root = tmp_path / "data"
    make_case(root, "good")
    make_case(root, "cut", shape=(40, 64, 64))  # big enough that the header survives the cut
    t2 = root / "cut" / "cut_t2.nii.gz"
    raw = gzip.decompress(t2.read_bytes())
    t2.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    make_case(root, "nan")
    arr = np.ones((6, 8, 8), np.float32)
    arr[3, 4, 4] = np.nan
    write(root / "nan" / "nan_flair.nii.gz", arr)
    cases = ["cut", "good", "nan"]
    splits = {c: {"split": "train", "fold": 0} for c in cases}
    header, _, _ = sheet(root, tmp_path / "h.tsv", splits=splits, full=False)
    assert not any(r["problem"] for r in header)
    rows, _, _ = sheet(root, tmp_path / "f.tsv", splits=splits, threads=3, bad_cases="skip")
    assert [r["case_id"] for r in rows] == cases
    problems = sheet_problems(tmp_path / "f.tsv")
    assert set(problems) == {"cut", "nan"}
    assert "cut_t2.nii.gz" in problems["cut"] and "cannot be read" in problems["cut"]
    assert "nan_flair.nii.gz" in problems["nan"] and "1 voxels are NaN" in problems["nan"]
    assert sheet_problems(tmp_path / "missing.tsv") == {}


def test_without_registration_modalities_must_share_one_space(tmp_path):
    root = tmp_path / "data"
    make_case(root, "moved")
    make_case(root, "other")
    t2 = root / "moved" / "moved_t2.nii.gz"
    img = sitk.ReadImage(str(t2))
    img.SetOrigin((0.0, 0.0, 5.0))
    sitk.WriteImage(img, str(t2))
    splits = {"moved": {"split": "test", "fold": None}}
    rows, _, _ = sheet(root, tmp_path / "a.tsv", splits=splits)
    assert not rows[0]["problem"]  # registration will align it
    rows, _, _ = sheet(root, tmp_path / "b.tsv", splits=splits, same_space=True)
    assert rows[0]["case_id"] == "moved"
    assert "moved_t2.nii.gz has origin [0.0, 0.0, 5.0]" in rows[0]["problem"] and "steps.register" in rows[0]["problem"]


def test_declared_convention_mismatch_is_an_error(tmp_path):
    root = tmp_path / "data"
    make_case(root, "c23", labels=(0, 1, 2, 3))
    make_case(root, "c21")
    sheet(root, tmp_path / "s.tsv", convention="2021", splits={"c23": {"split": "train", "fold": 0}})
    with pytest.raises(InputError, match="BraTS 2023 labels but the dataset is BraTS 2021"):
        case_row(tmp_path / "s.tsv", "c23")


@pytest.mark.parametrize("bad", ["../etc", "a/b", "..", "a b", ""])
def test_case_ids_cannot_escape(bad):
    with pytest.raises(InputError, match="not allowed"):
        check_case_id(bad)


def test_splits_deterministic_disjoint_and_test_held_out():
    cases = [f"c{i:03d}" for i in range(40)]
    s1, s2 = assign_splits(cases, 0.25, 5, seed=3), assign_splits(list(reversed(cases)), 0.25, 5, seed=3)
    assert s1 == s2
    tests = set(held_out_cases(s1))
    assert len(tests) == 10
    seen_val = set()
    for k in range(5):
        train, val = fold_cases(s1, k, 5)
        assert not (set(train) | set(val)) & tests
        assert not set(train) & set(val)
        seen_val |= set(val)
    assert seen_val == set(cases) - tests
    assert assign_splits(cases, 0.25, 5, seed=4) != s1
    with pytest.raises(ValueError, match="test_fraction"):
        assign_splits(cases, 1.5)


def test_excluded_cases_leave_every_other_split_alone():
    from medseg.cohort.listing import list_cases

    ds = {"source": "demo", "demo": {"n_cases": 12, "seed": 1}, "split": {"test_fraction": 0.25, "seed": 0}}
    full = list_cases("brats", ds)
    bad = full.train_cases(0)[0]
    less = list_cases("brats", {**ds, "exclude": [bad]})
    assert bad not in less.cases and less.excluded == {bad: "datasets.brats.exclude"}
    assert {c: s for c, s in full.splits.items() if c != bad} == less.splits
    assert bad not in less.train_cases(0) + less.val_cases(0) + less.test_cases()
    # cases the case sheet found unusable are dropped the same way, with their problem as the reason
    test_case = less.test_cases()[0]
    fewer = less.without({test_case: "case x: x_t1.nii.gz cannot be read", "not-a-case": "ignored"})
    assert fewer.excluded == {bad: "datasets.brats.exclude", test_case: "case x: x_t1.nii.gz cannot be read"}
    assert fewer.test_cases() == less.test_cases()[1:] and fewer.train_cases(0) == less.train_cases(0)
    assert less.without({}) is less
    with pytest.raises(ValueError, match="exclude.*nope"):
        list_cases("brats", {**ds, "exclude": ["nope"]})
