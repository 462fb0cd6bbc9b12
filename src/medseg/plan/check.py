"""Checking a whole workflow config at load, before any job runs (called from ``common.smk``).

:func:`validate_config` checks the config against ``workflow/schemas/config.schema.yaml`` (an
unknown key anywhere named by its path, with the valid ones); :func:`fill_defaults` fills what
the config leaves out with the schema's defaults, which are the config dataclasses' own
(:func:`load_schema` puts them there: one place); resolving the plans
(:func:`medseg.plan.resolved.resolve_plan`) builds every typed config of the preprocessing,
training and inference; :func:`check_config` finally builds each model key's network config and
checks what needs the networks (timm encoder names, patch sizes against the total stride).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"

#: schema node (a path of property names; ``*`` = every dataset) -> the dataclass that owns its defaults
SCHEMA_DATACLASSES = {
    ("preprocessing", "n4"): "medseg.preprocess.config:N4Config",
    ("preprocessing", "register"): "medseg.preprocess.config:RegConfig",
    ("preprocessing", "skullstrip"): "medseg.preprocess.config:SkullstripConfig",
    ("preprocessing", "normalize"): "medseg.preprocess.config:NormConfig",
    ("training",): "medseg.training.config:TrainConfig",
    ("training", "augment"): "medseg.training.config:AugmentConfig",
    ("training", "patch3d"): "medseg.training.config:Patch3DConfig",
    ("training", "augment3d"): "medseg.training.config:Augment3DConfig",
    ("inference",): "medseg.inference.config:InferenceConfig",
    ("evaluation",): "medseg.evaluate.config:EvalConfig",
    ("tracking",): "medseg.tracking.config:TrackingConfig",
}


def _dataclass(path: str):
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def dataclass_defaults(cls) -> dict[str, Any]:
    """Field name -> default of a config dataclass (fields with a plain default or a factory)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING and not dataclasses.is_dataclass(f.type):
            value = f.default_factory()
            if not dataclasses.is_dataclass(value):
                out[f.name] = _plain(value)
    return out


def schema_node(schema: Mapping[str, Any], keys: tuple[str, ...]) -> dict | None:
    node: Any = schema
    for k in keys:
        node = (node.get("properties") or {}).get(k) if isinstance(node, Mapping) else None
        if node is None:
            return None
    return node


def load_schema(path: str | None = None, with_defaults: bool = True) -> dict:
    """The workflow config's JSON schema as a mapping; ``with_defaults``: the defaults of the keys
    a config dataclass owns are that dataclass's (:data:`SCHEMA_DATACLASSES`), whatever the file says."""
    return copy.deepcopy(_schema(str(path or SCHEMA_PATH), with_defaults))


@functools.lru_cache(maxsize=4)
def _schema(path: str, with_defaults: bool) -> dict:
    import yaml

    with open(path) as f:
        schema = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if with_defaults:
        for keys, cls in SCHEMA_DATACLASSES.items():
            node = schema_node(schema, keys)
            for name, default in dataclass_defaults(_dataclass(cls)).items():
                prop = (node or {}).get("properties", {}).get(name)
                if isinstance(prop, dict) and "default" in prop:
                    prop["default"] = default
    return schema


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "the config"


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> None:
    """Validate ``config`` against the schema; every error names the config key it is about.

    An unknown key is reported as ``training.stepz`` with the valid keys of its section (and the
    closest one), so a typo anywhere (``tracking.enable``, ``resources.gpus``,
    ``models.<key>.<arch key>``) fails at load instead of being ignored.

    Raises:
        ValueError: all violations, one per line, each starting with the config key.
    """
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
                lines.append(f"config key {_key_path([*where, key])} is unknown"
                             + (f" (did you mean {close[0]}?)" if close else "")
                             + f"; valid keys of {_key_path(where)}: {valid}")
        else:
            lines.append(f"config key {_key_path(where)}: {err.message}")
    if lines:
        raise ValueError("invalid config:\n  " + "\n  ".join(dict.fromkeys(lines)))


def fill_defaults(config: dict, schema: Mapping[str, Any] | None = None) -> dict:
    """Fill ``config`` in place with the schema's defaults (as ``snakemake.utils.validate`` does,
    conditional branches included) and return it."""
    import jsonschema

    schema = load_schema() if schema is None else schema
    base = jsonschema.validators.validator_for(schema)
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, sub):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if isinstance(prop, Mapping) and "default" in prop:
                    instance.setdefault(name, copy.deepcopy(prop["default"]))
        yield from validate_properties(validator, properties, instance, sub)

    jsonschema.validators.extend(base, {"properties": set_defaults})(schema).validate(config)
    return config


def check_config(config: Mapping[str, Any], plans: Mapping[str, Any]) -> None:
    """What needs the networks themselves, for every model key of the plans: the architecture's
    config built with its keys (values checked), a timm encoder name known to timm (looked up
    with ``timm.is_model``, nothing built), the training patch and inference window multiples of
    the network's total stride; and a normalisation method for every modality.

    Raises:
        ValueError: naming the config key (``models.unet.encoder`` ...) and, where there is a
            list, the valid values or the closest ones.
    """
    from medseg.models.blocks import check_patch

    for plan in plans.values():
        task = plan.task
        for key, run in plan.runs.items():
            path = f"models.{key}"
            try:
                cfg = run.network_config(len(task.modalities), task.n_outputs)
                for what, patch in (("training.patch_size", run.training.patch_size),
                                    ("inference.patch_size", run.inference.patch_size)):
                    if patch is not None and run.spatial_dims == 3:
                        check_patch(cfg, patch, f"{path} {what} (or {path}.patch_size)")
            except (TypeError, ValueError) as e:
                raise ValueError(str(e) if path in str(e) else f"config {path}: {e}") from e
            _check_encoder(getattr(cfg, "encoder", None), path)
        recipe = plan.recipe
        if plan.kind == "mri":
            for m in task.modalities:
                try:
                    recipe.normalize.method_for(m)
                except ValueError as e:
                    raise ValueError(f"preprocessing.{e} (dataset {plan.dataset})") from e
    _check_normalize_keys(config, plans)


def _check_encoder(encoder: str | None, path: str) -> None:
    if not isinstance(encoder, str):
        return
    import timm

    if not timm.is_model(encoder):
        close = difflib.get_close_matches(encoder, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"{path}.encoder must be a timm model name, got {encoder!r}"
                         + (f"; did you mean one of {close}?" if close else "")
                         + " (python -c 'import timm; print(timm.list_models())' lists them)")


def _check_normalize_keys(config: Mapping[str, Any], plans: Mapping[str, Any]) -> None:
    """``preprocessing.normalize.method`` per modality names only modalities some dataset has."""
    method = ((config.get("preprocessing") or {}).get("normalize") or {}).get("method")
    every = sorted({m for p in plans.values() if p.kind == "mri" for m in p.task.modalities})
    if isinstance(method, Mapping) and every and (unknown := sorted(set(method) - set(every))):
        raise ValueError(f"preprocessing.normalize.method names modalities {unknown} that no dataset has "
                         f"(datasets' modalities: {every})")


# ---- the network check in the background -----------------------------------------------------------
# check_config imports torch and timm (~4 s). The workflow starts it in a second process when it loads
# (start_network_check), builds the DAG meanwhile, and waits for it before the first job runs (onstart)
# or, in a dry run, when Snakemake exits; a config checked once is remembered (the cache folder).


@dataclasses.dataclass
class NetworkCheck:
    """A running (or remembered) :func:`check_config` of a set of plans."""

    key: str
    cache: Path
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def wait(self) -> None:
        """Block until the check is done; ``ValueError`` with its message if the config is bad."""
        if self.proc is None:
            return
        code = self.proc.wait()
        message = self.log.read_text().strip() if self.log and self.log.exists() else ""
        self.proc = None
        if code:
            raise ValueError(message.splitlines()[-1] if message else f"config check failed (exit status {code})")
        self.cache.mkdir(parents=True, exist_ok=True)
        (self.cache / self.key).touch()


def _check_key(config: Mapping[str, Any], plans: Mapping[str, Any]) -> str:
    import medseg

    blob = json.dumps({"plans": {n: p.to_dict() for n, p in plans.items()},
                       "normalize": (config.get("preprocessing") or {}).get("normalize"),
                       "medseg": medseg.__version__, "src": str(Path(medseg.__file__).parent)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def start_network_check(config: Mapping[str, Any], plans: Mapping[str, Any], cache: str | Path) -> NetworkCheck:
    """Start :func:`check_config` of ``plans`` in a background process (nothing when this config was
    checked before: ``cache`` remembers it)."""
    key, cache = _check_key(config, plans), Path(cache)
    check = NetworkCheck(key, cache)
    if (cache / key).exists():
        return check
    work = Path(tempfile.mkdtemp(prefix="medseg-check-"))
    spec = work / "plans.json"
    spec.write_text(json.dumps({"config": config, "plans": {n: p.to_dict() for n, p in plans.items()}}, default=str))
    check.log = work / "check.log"
    with open(check.log, "w") as log:
        check.proc = subprocess.Popen([sys.executable, "-m", "medseg.plan.check", str(spec)], stdout=log, stderr=log,
                                      env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                          [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])})
    return check


def main(argv: list[str] | None = None) -> int:
    """``python -m medseg.plan.check plans.json``: :func:`check_config` of a ``{"config", "plans"}`` file."""
    from medseg.plan.resolved import Plan

    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    try:
        check_config(spec["config"], {n: Plan.from_dict(p) for n, p in spec["plans"].items()})
    except ValueError as e:
        print(" ".join(str(e).split()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
