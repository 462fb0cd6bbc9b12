"""Case discovery (BraTS 2021 / 2023 layouts), splits, and the validated case sheet."""
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cohort.layout import check_case_id, detect_layout, list_cases
from medseg.cohort.sheet import build_case_sheet, case_row, read_case_sheet, sheet_problems
from medseg.cohort.splits import assign_splits, fold_cases, held_out_cases
from medseg.io import InputError

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


@pytest.mark.parametrize("layout,labels,conv", [("brats2021", (0, 1, 2, 4), "2021"), ("brats2023", (0, 1, 2, 3), "2023")])
def test_layouts_and_convention_detection(tmp_path, layout, labels, conv):
    for c in ("A-001", "A-002", "A-003", "A-004"):
        make_case(tmp_path, c, layout, labels)
    (tmp_path / "notes").mkdir()  # a folder that is not a case
    assert detect_layout(tmp_path) == layout
    cases = list_cases(tmp_path)
    assert cases == ["A-001", "A-002", "A-003", "A-004"]
    rows = build_case_sheet(tmp_path, layout, cases, assign_splits(cases, 0.25), MODS, "auto", tmp_path / "cases.tsv")
    assert all(r["convention"] == conv and not r["problem"] for r in rows)
    assert set(read_case_sheet(tmp_path / "cases.tsv")) == set(cases)


def test_sheet_records_problems_per_case(tmp_path):
    make_case(tmp_path, "good", labels=(0, 1, 2, 4))
    make_case(tmp_path, "nomod", skip=("flair",))
    make_case(tmp_path, "badlab", labels=(0, 1, 3, 4))
    make_case(tmp_path, "grid", seg_shape=(5, 8, 8))
    (tmp_path / "trunc").mkdir()
    make_case(tmp_path, "trunc")
    t1 = tmp_path / "trunc" / "trunc_t1.nii.gz"
    t1.write_bytes(t1.read_bytes()[:40])
    cases = ["badlab", "good", "grid", "nomod", "trunc"]
    splits = {c: {"split": "train", "fold": None} for c in cases}
    build_case_sheet(tmp_path, "brats2021", cases, splits, MODS, "auto", tmp_path / "cases.tsv")
    sheet = tmp_path / "cases.tsv"
    assert case_row(sheet, "good")["convention"] == "2021"
    for case, msg in [("nomod", "missing flair"), ("badlab", "fit neither"), ("grid", "resample all modalities"),
                      ("trunc", "cannot be read")]:
        with pytest.raises(InputError, match=msg) as e:
            case_row(sheet, case)
        assert case in str(e.value)


def test_full_validation_reads_every_voxel(tmp_path):
    """Damage past an intact header (truncated gzip data, NaN/inf voxels) is found by the sheet
    reading each image whole; a header-only sheet cannot see it. Threads keep the case order."""
    import gzip

    make_case(tmp_path, "good")
    make_case(tmp_path, "cut", shape=(40, 64, 64))  # big enough that the header survives the cut
    t2 = tmp_path / "cut" / "cut_t2.nii.gz"
    raw = gzip.decompress(t2.read_bytes())
    t2.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    make_case(tmp_path, "nan")
    arr = np.ones((6, 8, 8), np.float32)
    arr[3, 4, 4] = np.nan
    write(tmp_path / "nan" / "nan_flair.nii.gz", arr)
    cases = ["cut", "good", "nan"]
    splits = {c: {"split": "train", "fold": 0} for c in cases}
    header = build_case_sheet(tmp_path, "brats2021", cases, splits, MODS, "auto", tmp_path / "h.tsv", full=False)
    assert not any(r["problem"] for r in header)
    rows = build_case_sheet(tmp_path, "brats2021", cases, splits, MODS, "auto", tmp_path / "f.tsv", threads=3,
                            bad_cases="skip")
    assert [r["case_id"] for r in rows] == cases
    problems = sheet_problems(tmp_path / "f.tsv")
    assert set(problems) == {"cut", "nan"}
    assert "cut_t2.nii.gz" in problems["cut"] and "cannot be read" in problems["cut"]
    assert "nan_flair.nii.gz" in problems["nan"] and "1 voxels are NaN" in problems["nan"]
    assert sheet_problems(tmp_path / "missing.tsv") == {}


def test_without_registration_modalities_must_share_one_space(tmp_path):
    make_case(tmp_path, "moved")
    t2 = tmp_path / "moved" / "moved_t2.nii.gz"
    img = sitk.ReadImage(str(t2))
    img.SetOrigin((0.0, 0.0, 5.0))
    sitk.WriteImage(img, str(t2))
    splits = {"moved": {"split": "test", "fold": None}}
    rows = build_case_sheet(tmp_path, "brats2021", ["moved"], splits, MODS, "auto", tmp_path / "a.tsv")
    assert not rows[0]["problem"]  # registration will align it
    rows = build_case_sheet(tmp_path, "brats2021", ["moved"], splits, MODS, "auto", tmp_path / "b.tsv", same_space=True)
    assert "moved_t2.nii.gz has origin [0.0, 0.0, 5.0]" in rows[0]["problem"] and "steps.register" in rows[0]["problem"]


def test_declared_convention_mismatch_is_an_error(tmp_path):
    make_case(tmp_path, "c23", labels=(0, 1, 2, 3))
    build_case_sheet(tmp_path, "brats2021", ["c23"], {"c23": {"split": "train", "fold": 0}}, MODS, "2021", tmp_path / "s.tsv")
    with pytest.raises(InputError, match="look like BraTS 2023"):
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
    from medseg.cohort.plan import dataset_plan

    ds = {"source": "demo", "demo": {"n_cases": 12, "seed": 1}, "split": {"test_fraction": 0.25, "seed": 0}}
    full = dataset_plan("brats", ds)
    bad = full.train_cases(0)[0]
    less = dataset_plan("brats", {**ds, "exclude": [bad]})
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
        dataset_plan("brats", {**ds, "exclude": ["nope"]})
