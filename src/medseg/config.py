"""Typed config: build frozen dataclasses from the (schema-validated) config mappings.

Unknown keys are errors that name the config path, lists become tuples, and nested dataclass
fields are built recursively, so a typo never silently falls back to a default.
:func:`check_config` builds all of them when the config is loaded, before any job runs.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Instantiate dataclass ``cls`` from ``data`` (``None`` -> all defaults).

    Raises:
        ValueError: a key that ``cls`` does not have (message names ``path.key`` and the valid keys).
    """
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(f'{path}{k}' for k in unknown)}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = from_mapping(hint, value, f"{path}{name}.")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _section(config: Mapping[str, Any], keys: tuple[str, ...]) -> Mapping[str, Any] | None:
    node: Any = config
    for i, k in enumerate(keys):
        if node is None:
            return None
        if not isinstance(node, Mapping):
            raise ValueError(f"config key {'.'.join(keys[:i]) or 'the config'} must be a mapping, got {node!r}")
        node = node.get(k)
    if node is not None and not isinstance(node, Mapping):
        raise ValueError(f"config key {'.'.join(keys)} must be a mapping, got {node!r}")
    return node


def _build(cls: type[T], data: Mapping[str, Any] | None, path: str) -> T:
    """:func:`from_mapping`, with every error (bad value, wrong type) naming the config key."""
    try:
        return from_mapping(cls, data, path + ".")
    except (TypeError, ValueError) as e:
        if path in str(e):
            raise
        raise ValueError(f"config {path}: {e}") from e


SCHEMA_PATH = __import__("pathlib").Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


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
