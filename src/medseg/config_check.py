"""Checking a whole workflow config at load, before any job runs (called from ``common.smk``).

Kept apart from :mod:`medseg.config` because it imports every stage's config (torch, timm) and
jsonschema: the jobs' own imports, and their conda envs, stay small. :func:`validate_config`
checks the config against ``workflow/schemas/config.schema.yaml`` (unknown keys named by path),
:func:`check_config` builds the typed configs.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg.config import _build, _section, datasets_of_kind


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def load_schema(path: str | None = None) -> dict:
    """The workflow config's JSON schema (``workflow/schemas/config.schema.yaml``) as a mapping."""
    import yaml

    with open(path or SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "the config"


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> None:
    """Validate ``config`` against the schema; every error names the config key it is about.

    Unlike ``snakemake.utils.validate`` this fills no defaults and reports an unknown key as
    ``training.stepz`` with the valid keys of its section (and the closest one), so a typo
    anywhere (``tracking.enable``, ``resources.gpus``, ``models.<key>.<arch key>``) fails at load
    instead of being ignored.

    Raises:
        ValueError: all violations, one per line, each starting with the config key.
    """
    import difflib

    import jsonschema

    schema = load_schema() if schema is None else schema
    validator = jsonschema.validators.validator_for(schema)(schema)
    lines = []
    for err in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        where = list(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, Mapping):
            valid = sorted(err.schema.get("properties", {}))
            for key in sorted(set(err.instance) - set(valid)):
                close = difflib.get_close_matches(str(key), valid, n=1)
                lines.append(f"config key {_key_path([*where, key])} is unknown" + (f" (did you mean {close[0]}?)" if close else "")
                             + f"; valid keys of {_key_path(where)}: {valid}")
        else:
            lines.append(f"config key {_key_path(where)}: {err.message}")
    if lines:
        raise ValueError("invalid config:\n  " + "\n  ".join(dict.fromkeys(lines)))


def check_config(config: Mapping[str, Any], plans: Mapping[str, Any] | None = None) -> None:
    """Build every typed config the workflow's jobs will build, so a bad key fails at load.

    ``training`` (TrainConfig, whose loss must be in :data:`medseg.losses.LOSSES`),
    ``inference``, ``models.<key>`` (arch in the model registry, the architecture's own keys,
    its ``training``/``inference`` overrides merged into the global sections; a timm_unet's
    encoder a timm model name, looked up with ``timm.is_model``, nothing built), ``preprocessing.normalize`` (a method per
    modality of every dataset, no method for a modality no dataset has), ``preprocessing.n4``,
    ``preprocessing.register``, ``preprocessing.skullstrip`` (its modality one of each skull-
    stripped dataset's modalities). ``plans``: the datasets' :class:`~medseg.cohort.plan.DatasetPlan`
    (their tasks' modalities and recipes); built from the config when not given.

    Raises:
        ValueError: naming the config key (``training.stpes``, ``models.unet.encoder`` ...) and,
            where there is a list, the valid values or the closest ones.
    """
    import timm

    from medseg.models import REGISTRY
    from medseg.preprocess.n4 import N4Config
    from medseg.preprocess.normalize import NormConfig
    from medseg.preprocess.register import RegConfig
    from medseg.preprocess.skullstrip import SkullstripConfig
    from medseg.train import TrainConfig, configs_for_model
    from medseg.volume_inference import InferenceConfig

    for cls, keys in ((TrainConfig, ("training",)), (InferenceConfig, ("inference",)),
                      (N4Config, ("preprocessing", "n4")), (RegConfig, ("preprocessing", "register"))):
        _build(cls, _section(config, keys), ".".join(keys))
    models = _section(config, ("models",)) or {}
    for key, mapping in models.items():
        path = f"models.{key}"
        if not isinstance(mapping, Mapping):
            raise ValueError(f"config key {path} must be a mapping, got {mapping!r}")
        try:  # the network, and the global training/inference sections with this model's overrides
            mcfg, _, _ = configs_for_model(dict(mapping), _section(config, ("training",)),
                                           _section(config, ("inference",)), key)
        except (TypeError, ValueError) as e:
            if path in str(e):
                raise
            raise ValueError(f"config {path}: {e}") from e
        if mcfg.arch not in REGISTRY:
            raise ValueError(f"{path}.arch must be one of {sorted(REGISTRY)}, got {mcfg.arch!r}")
        if isinstance(getattr(mcfg, "encoder", None), str) and not timm.is_model(mcfg.encoder):
            close = difflib.get_close_matches(mcfg.encoder, timm.list_models(), n=5, cutoff=0.6)
            raise ValueError(f"{path}.encoder must be a timm model name, got {mcfg.encoder!r}"
                             + (f"; did you mean one of {close}?" if close else "")
                             + " (python -c 'import timm; print(timm.list_models())' lists them)")
    datasets = datasets_of_kind(config, "mri")
    if plans is None:
        from medseg.cohort.plan import dataset_plan

        plans = {name: dataset_plan(name, dict(d)) for name, d in datasets.items() if isinstance(d, Mapping)}
    modalities = {name: list(p.modalities) for name, p in plans.items()}
    every = sorted({m for mods in modalities.values() for m in mods})
    norm = _build(NormConfig, _section(config, ("preprocessing", "normalize")), "preprocessing.normalize")
    try:
        for m in every or ["any"]:
            norm.method_for(m)
    except ValueError as e:
        raise ValueError(f"preprocessing.{e}") from e
    if isinstance(norm.method, Mapping) and every and (unknown := sorted(set(norm.method) - set(every))):
        raise ValueError(f"preprocessing.normalize.method names modalities {unknown} that no dataset has "
                         f"(datasets' modalities: {every})")
    skull = _build(SkullstripConfig, _section(config, ("preprocessing", "skullstrip")), "preprocessing.skullstrip")
    for name, mods in modalities.items():
        steps = datasets[name].get("steps") or {}
        on = steps.get("skullstrip", plans[name].task.recipe == "brain")
        if mods and on and skull.method != "nonzero" and skull.modality not in mods:
            raise ValueError(f"preprocessing.skullstrip.modality must be one of the modalities of dataset {name!r} "
                             f"{mods} (it has steps.skullstrip on), got {skull.modality!r}")
