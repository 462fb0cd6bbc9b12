"""The resolved plan: every decision made once (recipe, model runs), and every door reading it:
the CLI step commands' defaults equal the plan's and its dataclasses', the schema's defaults are
the dataclasses', a plan survives plan.json."""
from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from medseg.plan.check import fill_defaults, load_schema, schema_node, SCHEMA_DATACLASSES, validate_config
from medseg.plan.recipe import DEFAULT, GENERIC_N4, resolve_recipe
from medseg.plan.resolved import read_plan, resolve_plan, resolve_slide_plan, write_plan
from medseg.plan.runs import resolve_run
from medseg.tasks.presets import brats_task

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    validate_config(cfg)
    return fill_defaults(cfg)


def test_brats_recipe_is_the_brain_recipe(config):
    task = brats_task("brats", "2021")
    r = resolve_recipe(config, config["datasets"]["brats"], "brain", task.modalities, "datasets.brats")
    assert (r.steps.n4, r.steps.register, r.steps.skullstrip) == (True, True, True)
    assert r.reference == "t1ce" and r.orientation is None and r.stage == "reg"
    assert r.skullstrip.method == "deepbet" == DEFAULT.skullstrip.method
    assert r.n4.mask == "brain" and r.n4.tissue_prior and r.normalize.method == "nyul"
    assert r.n4_stage().settings == r.n4 and r.register_stage().skull_stripped is False
    assert r.native_stage() == dataclasses.replace(r.native_stage(), stage="reg", reference="t1ce", registered=True)


def test_generic_recipe_classic_n4_zscore_native_grid(config):
    ds = {**config["datasets"]["tissue"], "steps": {"n4": True}}
    r = resolve_recipe(config, ds, "generic", ("t1",), "datasets.tissue")
    assert (r.steps.register, r.steps.skullstrip) == (False, False) and r.stage == "n4"
    assert {k: getattr(r.n4, k) for k in GENERIC_N4} == GENERIC_N4
    assert r.normalize.method == "zscore" and r.orientation == "LPS" and r.spacing_mm == (2.5, 2.5, 2.5)
    assert r.skullstrip.method == "nonzero" and r.normalize_stage().masked is False
    # a dataset's own normalisation wins over the recipe's z-score
    r2 = resolve_recipe(config, {**ds, "normalize": {"method": "none"}}, "generic", ("t1",), "datasets.tissue")
    assert r2.normalize.method == "none"


def test_a_bad_recipe_key_names_the_dataset(config):
    with pytest.raises(ValueError, match="datasets.x.reference 'flair'"):
        resolve_recipe(config, {"reference": "flair"}, "brain", ("t1",), "datasets.x")
    with pytest.raises(ValueError, match="datasets.x.recipe"):
        resolve_recipe(config, {}, "bones", ("t1",), "datasets.x")
    bad = copy.deepcopy(config)
    bad["preprocessing"]["skullstrip"]["modality"] = "pd"
    with pytest.raises(ValueError, match="skullstrip.modality must be one of the modalities of datasets.x"):
        resolve_recipe(bad, {}, "brain", ("t1", "t2"), "datasets.x")


def test_each_models_run_resolves_loss_patch_window_blending_once(config):
    timm = resolve_run(config, "timm")
    assert timm.spatial_dims == 2 and timm.training.loss == "dice_bce" and timm.training.patch_size == (64, 64)
    assert timm.inference.patch_size is None and timm.inference.mode == "gaussian" and timm.training.context == 1
    u = resolve_run(config, "unet3d")
    assert u.training.loss == "jaccard" and u.training.patch_size == (48, 48, 48) == u.inference.patch_size
    assert u.training.context == 0 and u.training.batch_size == 2 and "patch_size" not in u.model
    assert resolve_run(config, "tiramisu3d").inference.mode == "constant"
    assert resolve_run(config, "factorized_unet").training.loss == "multiclass_iou"
    e = resolve_run(config, "edpcnn")
    assert e.arch.whole_slices and e.inference.patch_size is None
    # precedence: the model key's own sections over the global ones; a window given for inference wins
    cfg = {**config, "inference": {**config["inference"], "patch_size": [32, 32, 32], "mode": "cosine"}}
    u2 = resolve_run(cfg, "unet3d")
    assert u2.inference.patch_size == (32, 32, 32) and u2.inference.mode == "cosine"
    assert u2.training.patch_size == (48, 48, 48)


def test_a_2d_window_on_a_2d_net_and_3_values_are_refused(config):
    cfg = {**config, "training": {**config["training"], "patch_size": [32, 32, 32]}}
    with pytest.raises(ValueError, match="training.patch_size of a 2-D network"):
        resolve_run(cfg, "timm")


def test_plan_round_trips_through_plan_json(config, tmp_path):
    plan = resolve_plan(config, "brats", brats_task("brats", "2021"))
    write_plan(plan, tmp_path / "plan.json")
    back = read_plan(tmp_path / "plan.json")
    assert back == plan and back.run("unet3d") == plan.run("unet3d")
    slides = resolve_slide_plan(config, "slides")
    write_plan(slides, tmp_path / "slides.json")
    assert read_plan(tmp_path / "slides.json") == slides
    assert slides.run("timm").training.context == 0 and slides.run("timm").training.steps == 80
    with pytest.raises(ValueError, match="is not a key of models"):
        plan.run("nope")


def test_schema_defaults_are_the_dataclasses(config):
    """The schema file documents each dataclass default; load_schema() uses the dataclass's (one place)."""
    from medseg.plan.check import _dataclass, dataclass_defaults

    raw, used = load_schema(with_defaults=False), load_schema()
    for keys, cls in SCHEMA_DATACLASSES.items():
        defaults = dataclass_defaults(_dataclass(cls))
        for name, prop in (schema_node(raw, keys).get("properties") or {}).items():
            if "default" in prop and name in defaults:
                assert prop["default"] == defaults[name], (keys, name)
                assert schema_node(used, keys)["properties"][name]["default"] == defaults[name]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from medseg.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _plan_defaults() -> dict[tuple[str, str], object]:
    """(subcommand, option dest) -> the default the plan (or the dataclass it is built from) holds."""
    from medseg.cohort.splits import SplitConfig
    from medseg.cohort.synth import SynthConfig
    from medseg.evaluate.config import EvalConfig

    from medseg.plan.resolved import SlideRecipe

    demo, split, ev, slide = SynthConfig(), SplitConfig(), EvalConfig(), SlideRecipe().predict
    schema = load_schema()
    mri = schema["properties"]["datasets"]["additionalProperties"]["allOf"][0]["else"]
    convention = mri["properties"]["convention"]["default"]
    return {
        ("synth-cohort", "n_cases"): demo.n_cases, ("synth-cohort", "seed"): demo.seed,
        ("synth-cohort", "spacing"): demo.spacing_mm[0], ("synth-cohort", "anatomy"): demo.anatomy,
        ("synth-cohort", "fov_variety"): demo.fov_variety,
        ("case-sheet", "convention"): convention, ("case-sheet", "test_fraction"): split.test_fraction,
        ("case-sheet", "val_fraction"): split.val_fraction, ("case-sheet", "folds"): split.n_folds,
        ("case-sheet", "seed"): split.seed,
        ("register", "grid_mm"): DEFAULT.register.bspline_grid_mm, ("register", "backend"): DEFAULT.register.backend,
        ("skullstrip", "method"): DEFAULT.skullstrip.method,
        ("normalise", "method"): DEFAULT.normalize.method, ("normalize", "method"): DEFAULT.normalize.method,
        ("tile", "method"): DEFAULT.normalize.method,
        ("evaluate", "convention"): convention, ("evaluate", "lesionwise"): ev.lesionwise,
        ("evaluate", "edition"): ev.edition, ("evaluate", "hd_max_mm"): ev.hd_max_mm,
        ("evaluate", "nsd_tolerance_mm"): ev.nsd_tolerance_mm, ("evaluate", "hd95_method"): ev.hd95_method,
        ("stitch-slide", "tile"): slide.tile, ("stitch-slide", "overlap"): slide.overlap,
        ("stitch-slide", "mode"): slide.mode, ("stitch-slide", "batch_size"): slide.batch_size,
        ("stitch-slide", "device"): slide.device, **_slide_defaults(),
    }


def _slide_defaults() -> dict[tuple[str, str], object]:
    """The slide commands' (subcommand, option dest) -> the slide plan's default (SlideRecipe, DemoConfig, schema)."""
    from medseg.plan.resolved import SlideRecipe
    from medseg.wsi.demo import DemoConfig

    r, demo = SlideRecipe(), DemoConfig()
    slide_schema = load_schema()["properties"]["datasets"]["additionalProperties"]["allOf"][0]["then"]
    return {
        ("stitch-slide", "slide_mpp"): r.mpp,
        ("slides-demo", "n_slides"): demo.n_slides, ("slides-demo", "size"): demo.size,
        ("slides-demo", "seed"): demo.seed,
        ("slides-demo", "cmu"): slide_schema["properties"]["demo"]["properties"]["cmu"]["default"],
        ("slides-sheet", "test_fraction"): r.split.test_fraction, ("slides-sheet", "val_fraction"): r.split.val_fraction,
        ("slides-sheet", "seed"): r.split.seed, ("slides-sheet", "slide_mpp"): r.mpp,
        ("slides-stain", "method"): r.stain, ("slides-stain", "mpp"): r.tiles.mpp,
        ("slides-tiles", "mpp"): r.tiles.mpp, ("slides-tiles", "tile"): r.tiles.tile,
        ("slides-tiles", "per_class"): r.tiles.per_class, ("slides-tiles", "seed"): r.tiles.seed,
        ("slides-tiles", "slide_mpp"): r.mpp,
        ("slides-evaluate", "mpp"): r.evaluation.mpp, ("slides-evaluate", "min_object_px"): r.evaluation.min_object_px,
        ("slides-evaluate", "object_iou"): r.evaluation.object_iou,
    }


#: options that are the command's own (no plan or workflow setting says the same thing)
CLI_ONLY = {"input", "image", "moving", "fixed_pos", "fixed", "root", "mask", "bias_field", "task", "normaliser",
            "case", "csv", "plot", "config", "model", "fold", "steps", "device", "threads", "workers",
            "full_geometry", "shrink", "no_atlas", "kind", "spool", "png", "progress"}


def test_cli_defaults_equal_the_plans():
    expected = _plan_defaults()
    commands = _subcommands()
    seen = set()
    for name, sub in commands.items():
        for action in sub._actions:
            if action.required or action.default is argparse.SUPPRESS or action.dest in ("help", "func"):
                continue
            key = (name, action.dest)
            if key in expected:
                assert action.default == expected[key], f"medseg {name} --{action.dest}: {action.default!r} != plan's"
                seen.add(key)
    assert seen == set(expected), sorted(set(expected) - seen)


def test_skullstrip_command_is_deepbet_and_synth_cohort_is_the_workflow_demo():
    args = _subcommands()["skullstrip"].parse_args(["-i", "head.nii.gz", "-o", "mask.nii.gz"])
    assert args.method == "deepbet"
    demo = yaml.safe_load((REPO / "config.yaml").read_text())["datasets"]["brats"]["demo"]
    synth = _subcommands()["synth-cohort"].parse_args(["-o", "x"])
    assert (synth.anatomy, synth.fov_variety, synth.n_cases, synth.seed) == (
        demo["anatomy"], demo["fov_variety"], demo["n_cases"], demo["seed"])


def test_a_partial_steps_block_keeps_the_recipes_other_steps(config):
    """steps: {n4: false} on a generic dataset must not switch registration and skull stripping on
    (the schema fills no step defaults: they are the recipe's)."""
    cfg = copy.deepcopy(config)
    cfg["datasets"]["tissue"]["steps"] = {"n4": False}
    fill_defaults(cfg)
    assert cfg["datasets"]["tissue"]["steps"] == {"n4": False}
    r = resolve_recipe(cfg, cfg["datasets"]["tissue"], "generic", ("t1",), "datasets.tissue")
    assert (r.steps.n4, r.steps.register, r.steps.skullstrip) == (False, False, False)
