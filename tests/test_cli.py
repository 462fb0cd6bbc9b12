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


def _subparsers():
    import argparse

    from medseg.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, dict(sub.choices)


def test_every_stage_is_a_subcommand():
    _, subs = _subparsers()
    for cmd in ("synth-cohort", "case-sheet", "n4", "register", "skullstrip", "normalise", "normalize", "tile", "train",
                "predict", "evaluate", "stitch-slide", "tracking-sync"):
        assert cmd in subs, cmd


def test_every_argument_has_help_and_its_default_shown():
    import argparse

    from medseg.cli import HelpFormatter

    parser, subs = _subparsers()
    for name, p in [("medseg", parser), *subs.items()]:
        assert p.formatter_class is HelpFormatter, f"{name} does not show defaults"
        fmt = HelpFormatter(name)
        for action in p._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            flag = "/".join(action.option_strings) or action.dest
            assert action.help and len(action.help) > 5, f"medseg {name} {flag} has no help"
            text = fmt._get_help_string(action)
            if not action.required and action.default not in (None, False, argparse.SUPPRESS):
                assert "%(default)" in text or "default" in action.help, f"medseg {name} {flag} does not show its default"
        if name in ("medseg", "tracking-sync"):
            continue
        outs = [a for a in p._actions if "-o" in a.option_strings]
        if name not in ("predict",):
            assert outs and "--output" in outs[0].option_strings, f"medseg {name} has no -o/--output"


def test_version_prints_the_package_version(capsys):
    import re
    from pathlib import Path

    import medseg

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"medseg {medseg.__version__}"
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1) == medseg.__version__


@pytest.mark.parametrize("old,new", [
    (["n4", "a.nii", "--out", "b.nii"], ["n4", "-i", "a.nii", "-o", "b.nii"]),
    (["skullstrip", "a.nii", "--out-mask", "m.nii"], ["skullstrip", "--input", "a.nii", "--output", "m.nii"]),
    (["evaluate", "--pred", "p", "--ref", "r", "--json", "o.json"], ["evaluate", "-i", "p", "-r", "r", "-o", "o.json"]),
    (["case-sheet", "root", "--out", "c.tsv"], ["case-sheet", "-i", "root", "-o", "c.tsv"]),
    (["synth-cohort", "--out", "d"], ["synth-cohort", "-o", "d"]),
    (["stitch-slide", "s.svs", "--out", "d", "--predictor", "identity"],
     ["stitch-slide", "-i", "s.svs", "-o", "d", "--predictor", "identity"]),
    (["slides-demo", "--out", "d"], ["slides-demo", "--output", "d"]),
    (["slides-sheet", "slides", "--annotations", "a", "--classes", "x", "--out", "s.tsv"],
     ["slides-sheet", "-i", "slides", "--annotations", "a", "--classes", "x", "-o", "s.tsv"]),
    (["slides-stain", "s.tsv", "--out", "stain.json"], ["slides-stain", "--input", "s.tsv", "-o", "stain.json"]),
    (["slides-tiles", "s.svs", "--annotation", "a.geojson", "--classes", "x", "--out", "t/s"],
     ["slides-tiles", "-i", "s.svs", "--annotation", "a.geojson", "--classes", "x", "-o", "t/s"]),
    (["slides-evaluate", "pred", "--slide", "s.svs", "--annotation", "a.geojson", "--classes", "x", "--out", "m.json"],
     ["slides-evaluate", "-i", "pred", "--slide", "s.svs", "--annotation", "a.geojson", "--classes", "x", "-o", "m.json"]),
])
def test_old_flags_still_work_and_are_hidden(old, new, capsys):
    from medseg.cli import _resolve_legacy_input, build_parser

    parsed = []
    for argv in (old, new):
        a = build_parser().parse_args(argv)
        _resolve_legacy_input(a)
        parsed.append((a.input, a.output) if hasattr(a, "input") else a.output)
    assert parsed[0] == parsed[1]
    with pytest.raises(SystemExit):
        main([new[0], "--help"])
    out = capsys.readouterr().out
    for hidden in ("--out ", "--out-mask", "--json", "--pred "):
        assert hidden not in out
    assert "-o OUTPUT, --output OUTPUT" in out


def test_register_old_positionals_and_new_flags_agree():
    from medseg.cli import _resolve_legacy_input, build_parser

    a = build_parser().parse_args(["register", "mov.nii", "fix.nii", "--out", "o.nii", "--transform", "t.tfm"])
    _resolve_legacy_input(a)
    b = build_parser().parse_args(["register", "-i", "mov.nii", "-f", "fix.nii", "-o", "o.nii", "--transform", "t.tfm"])
    assert (a.input, a.fixed_pos, a.output) == (b.input, b.fixed, b.output)


def test_missing_input_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["n4", "-o", "x.nii.gz"])
    assert e.value.code == 2 and "-i/--input" in capsys.readouterr().err


def _stage(demo_case, tmp_path):
    stage = tmp_path / demo_case["case"]
    stage.mkdir()
    mods = ["t1", "t1ce", "t2", "flair"]
    for m in mods:
        (stage / f"{m}.nii.gz").symlink_to(demo_case[m])
    return stage, mods


def _tile(demo_case, tmp_path, stage, mods):
    import json

    from medseg.tasks.presets import brats_task

    task = tmp_path / "task.json"
    task.write_text(json.dumps(brats_task("demo", "2021").to_dict()))
    tiles = tmp_path / "tiles" / "case.npy"
    assert main(["tile", "-i", str(stage), "-m", *mods, "--method", "zscore", "-s", str(demo_case["seg"]), "-t", str(task),
                 "-o", str(tiles)]) == 0
    return tiles, task


def test_normalise_and_tile_on_files(demo_case, tmp_path):
    import json

    stage, mods = _stage(demo_case, tmp_path)
    assert main(["normalise", "-i", str(stage), "-m", *mods, "--method", "zscore", "-o", str(tmp_path / "n.npz")]) == 0
    arrays = np.load(tmp_path / "n.npz")
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_case["t1"])))
    assert arrays["image"].shape == (1, 4, *img.shape)
    brain = arrays["brain"].astype(bool)
    assert abs(arrays["image"][0, 0][brain].mean()) < 0.1  # z-scored in the brain
    assert main(["normalise", "-i", str(stage), "-m", *mods, "-o", str(tmp_path / "x.npz")]) == 2  # nyul needs a fit

    tiles, _ = _tile(demo_case, tmp_path, stage, mods)
    table = json.loads(tiles.with_suffix(".json").read_text())
    assert table["shape"] == [4 + 3, *img.shape] and table["fg_slices"]


@pytest.mark.slow
def test_train_on_tiles(demo_case, tmp_path):
    tiles, task = _tile(demo_case, tmp_path, *_stage(demo_case, tmp_path))
    cfg = tmp_path / "config.yaml"
    cfg.write_text("models:\n  tiny:\n    encoder: resnet10t\n    decoder_channels: [16, 16, 8, 8, 8]\n"
                   "training:\n  batch_size: 2\n  patch_size: [32, 32]\n  checkpoint_every: 2\n  val_every: 2\n")
    out = tmp_path / "fold0"
    assert main(["train", "-i", str(tiles), "--val", str(tiles), "-t", str(task), "-c", str(cfg), "--steps", "2",
                 "--device", "cpu", "--threads", "1", "-o", str(out)]) == 0
    assert (out / "model.pt").exists() and (out / "metrics.csv").exists()
