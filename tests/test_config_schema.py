"""One config truth: the schema lists every key the code reads, with the dataclasses' defaults,
and rejects unknown keys anywhere, naming their path."""
from __future__ import annotations

import copy
import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from medseg.plan.check import load_schema, validate_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema()
# keys of a dataclass the workflow sets itself (not user config)
NOT_CONFIG = {"in_channels", "out_channels", "object_channel", "register", "atlas_dir"}
MODEL_OVERRIDES = {"training", "inference"}  # a model key's overrides of the global sections (medseg.plan.runs.MODEL_SECTIONS)
# a model key's own keys that the plan reads, not the network config (networks are size-agnostic)
MODEL_PLAN_KEYS = MODEL_OVERRIDES | {"patch_size"}
# keys without a schema default on purpose: the workflow sets them when the config does not
# (snakemake fills schema defaults into the config, which would override the workflow's value)
WORKFLOW_SETS = {"training.threads"}  # train_model: the rule's threads


def _node(*keys: str) -> dict:
    node = SCHEMA
    for k in keys:
        node = node["properties"][k]
    return node


def _walk(node, path=""):
    """Every subschema with ``properties``, with its config path."""
    if isinstance(node, dict):
        if "properties" in node:
            yield path, node
            for k, sub in node["properties"].items():
                yield from _walk(sub, f"{path}.{k}".lstrip("."))
        for key in ("additionalProperties", "then", "else"):
            if isinstance(node.get(key), dict):
                yield from _walk(node[key], f"{path}.<key>" if key == "additionalProperties" else path)
        for sub in node.get("allOf", []):
            yield from _walk(sub, path)


def _kinds() -> dict:
    """``datasets.<key>`` schemas by kind: ``mri`` and ``slide``."""
    (switch,) = _node("datasets")["additionalProperties"]["allOf"]
    return {"slide": switch["then"], "mri": switch["else"]}


def _dataclass_defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _sections():
    from medseg.training.config import AugmentConfig
    from medseg.models import REGISTRY
    from medseg.preprocess.config import N4Config
    from medseg.preprocess.config import NormConfig
    from medseg.preprocess.config import RegConfig
    from medseg.preprocess.config import SkullstripConfig
    from medseg.training.config import TrainConfig
    from medseg.inference.config import InferenceConfig

    models = {i["if"]["properties"]["arch"]["const"]: i["then"] for i in _node("models")["additionalProperties"]["allOf"]}
    out = {"training": (TrainConfig, _node("training")), "training.augment": (AugmentConfig, _node("training", "augment")),
           "inference": (InferenceConfig, _node("inference")), "preprocessing.n4": (N4Config, _node("preprocessing", "n4")),
           "preprocessing.register": (RegConfig, _node("preprocessing", "register")),
           "preprocessing.skullstrip": (SkullstripConfig, _node("preprocessing", "skullstrip")),
           "preprocessing.normalize": (NormConfig, _node("preprocessing", "normalize"))}
    for arch, spec in REGISTRY.items():
        out[f"models.<{arch}>"] = (spec.config_class(), models.get(arch, {"properties": {}}))
    return out


def test_every_section_rejects_unknown_keys_and_documents_each_key():
    for path, node in _walk(SCHEMA):
        assert node.get("additionalProperties") is False or path in ("models.<key>", "datasets.<key>", "datasets.<key>.demo"), \
            f"schema section {path or 'top'} accepts unknown keys: add additionalProperties: false"
        for key, sub in node["properties"].items():
            assert sub.get("description"), f"{path}.{key} has no description"


@pytest.mark.parametrize("section", sorted(_sections()))
def test_schema_and_dataclass_agree_on_keys_and_defaults(section):
    cls, node = _sections()[section]
    defaults = {k: v for k, v in _dataclass_defaults(cls).items() if k not in NOT_CONFIG}
    props = {k: v for k, v in node["properties"].items() if not (section.startswith("models.") and k in MODEL_PLAN_KEYS)}
    if section.startswith("models."):  # models.<key>.patch_size: the plan's, defaulting to the registry entry's
        from medseg.models import REGISTRY

        entry = REGISTRY[section[len("models.<"):-1]]
        patch = node["properties"].get("patch_size")
        if entry.default_patch is None:
            assert patch is None, f"{section}.patch_size: the registry entry has no default patch"
        else:
            assert patch is not None and _tuples(patch["default"]) == entry.default_patch, \
                f"{section}.patch_size: schema default {patch and patch.get('default')}, registry {entry.default_patch}"
    assert set(props) == set(defaults), (f"{section}: keys only in the schema {sorted(set(props) - set(defaults))}, "
                                         f"only in {cls.__name__} {sorted(set(defaults) - set(props))}")
    for key, value in defaults.items():
        if dataclasses.is_dataclass(value):
            continue  # a nested section (training.augment), checked on its own
        if key == "arch":
            assert props[key].get("const", props[key].get("default")) == value
            continue
        if f"{section}.{key}" in WORKFLOW_SETS:
            assert "default" not in props[key], f"{section}.{key}: a schema default would override the workflow's"
            continue
        assert "default" in props[key], f"{section}.{key} has no default in the schema"
        assert _tuples(props[key]["default"]) == value, \
            f"{section}.{key}: schema default {props[key]['default']!r}, {cls.__name__} default {value!r}"


def test_demo_defaults_are_the_generators_defaults():
    from medseg.cohort.synth import SynthConfig
    from medseg.cohort.synth_tissue import TissueSynthConfig

    node = _kinds()["mri"]["properties"]["demo"]
    kinds = {i["if"]["properties"]["kind"]["const"]: i["then"]["properties"] for i in node["allOf"]}
    for kind, cls in (("brats", SynthConfig), ("tissue", TissueSynthConfig)):
        defaults = _dataclass_defaults(cls)
        for key, sub in kinds[kind].items():
            if key in ("kind", "full_geometry"):
                continue
            assert key in defaults, f"datasets.<key>.demo.{key} (kind {kind}) is not a {cls.__name__} field"
            assert _tuples(sub["default"]) == defaults[key], f"demo.{key} (kind {kind})"


def test_arch_enum_is_the_model_registry():
    from medseg.models import REGISTRY

    node = _node("models")["additionalProperties"]
    assert sorted(node["properties"]["arch"]["enum"]) == sorted(REGISTRY)
    assert node["properties"]["arch"]["default"] == "timm_unet"


def test_evaluation_defaults_are_evaluate_case_defaults():
    """evaluate_case takes the ``evaluation`` settings as an EvalConfig (its defaults when not given) or as
    keyword options: every schema key is one of its fields, with the dataclass's default in the file too."""
    from medseg.config import with_options
    from medseg.evaluate.case import evaluate_case
    from medseg.evaluate.config import EvalConfig

    params = inspect.signature(evaluate_case).parameters
    assert params["config"].default is None and params["options"].kind is inspect.Parameter.VAR_KEYWORD
    defaults = _dataclass_defaults(EvalConfig)
    raw = load_schema(with_defaults=False)["properties"]["evaluation"]["properties"]
    assert set(raw) == set(defaults), f"evaluation: schema {sorted(raw)}, EvalConfig {sorted(defaults)}"
    for key, sub in raw.items():
        assert sub["default"] == defaults[key], key
        assert getattr(with_options(EvalConfig(), {key: sub["default"]}, "evaluate_case"), key) == sub["default"]


def test_config_yaml_is_valid_and_sets_every_default_it_names():
    validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    for cfg in (REPO / "tests" / "configs").glob("*.yaml"):
        from snakemake.utils import update_config

        merged = yaml.safe_load((REPO / "config.yaml").read_text())
        update_config(merged, yaml.safe_load(cfg.read_text()))  # as --configfile overlays it
        validate_config(merged)


@pytest.mark.parametrize("path", ["training.stepz", "tracking.enable", "resources.gpus", "training.augment.flipp",
                                  "inference.ovrlap", "evaluation.hd_max", "preprocessing.n4.itrations",
                                  "preprocessing.register.level", "preprocessing.skullstrip.metod",
                                  "preprocessing.normalize.percentile", "models.timm.features", "datasets.brats.split.sed",
                                  "datasets.brats.steps.n5", "datasets.brats.demo.ncases", "datasets.tissue.demo.full_geometry", "datasets.brats.normalize.methd",
                                  "datasets.brats.sourc", "datasets.slides.tiles.tyle", "datasets.slides.demo.n_slide",
                                  "trainin"])
def test_unknown_key_anywhere_fails_with_its_path(path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    node = config
    *parents, leaf = path.split(".")
    for k in parents:
        node = node.setdefault(k, {})
    node[leaf] = 1
    with pytest.raises(ValueError, match=rf"config key {path.replace('.', '[.]')} is unknown"):
        validate_config(config)


def test_model_keys_depend_on_the_arch():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["models"]["u3"] = {"arch": "unet3d", "patch_size": [32, 32, 32], "features": [8, 16]}
    validate_config(config)
    bad = copy.deepcopy(config)
    bad["models"]["u3"]["encoder"] = "resnet18"  # a timm_unet key
    with pytest.raises(ValueError, match=r"models[.]u3[.]encoder is unknown"):
        validate_config(bad)
    bad = copy.deepcopy(config)
    bad["models"]["timm"]["features"] = [8, 16]  # a unet3d key on the default arch
    with pytest.raises(ValueError, match=r"models[.]timm[.]features is unknown"):
        validate_config(bad)
    bad = copy.deepcopy(config)
    bad["models"]["u3"]["arch"] = "unet4d"
    with pytest.raises(ValueError, match=r"models[.]u3[.]arch"):
        validate_config(bad)


def test_dataset_keys_depend_on_the_kind():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert config["datasets"]["slides"]["kind"] == "slide" and "kind" not in config["datasets"]["brats"]
    for name, key, value in (("slides", "modalities", ["t1"]), ("brats", "classes", ["tumour"])):
        bad = copy.deepcopy(config)
        bad["datasets"][name][key] = value  # an MRI key on a slide dataset, a slide key on an MRI one
        with pytest.raises(ValueError, match=rf"datasets[.]{name}[.]{key} is unknown"):
            validate_config(bad)
    bad = copy.deepcopy(config)
    bad["datasets"]["slides"]["kind"] = "slides"
    with pytest.raises(ValueError, match=r"config key datasets[.]slides[.]kind"):
        validate_config(bad)
    bad = copy.deepcopy(config)
    del bad["datasets"]["slides"]["classes"]
    with pytest.raises(ValueError, match=r"config key datasets[.]slides: 'classes' is a required property"):
        validate_config(bad)


@pytest.mark.parametrize("device,ok", [("auto", True), ("cpu", True), ("cuda", True), ("cuda:1", True),
                                       ("gpu", False), ("cuda1", False)])
def test_devices_are_checked_at_load(device, ok):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["training"]["device"] = device
    if ok:
        validate_config(config)
    else:
        with pytest.raises(ValueError, match="config key training.device"):
            validate_config(config)


def test_snakemake_dry_run_rejects_an_unknown_key_with_its_path(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  stepz: 10\n")
    r = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                        str(tmp_path), "--configfile", str(REPO / "config.yaml"), str(bad), "-n"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "config key training.stepz is unknown (did you mean steps?)" in r.stdout + r.stderr
