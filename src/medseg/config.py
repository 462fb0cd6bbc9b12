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


def section(config: Mapping[str, Any], keys: tuple[str, ...]) -> Mapping[str, Any] | None:
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


def build(cls: type[T], data: Mapping[str, Any] | None, path: str) -> T:
    """:func:`from_mapping`, with every error (bad value, wrong type) naming the config key."""
    try:
        return from_mapping(cls, data, path + ".")
    except (TypeError, ValueError) as e:
        if path in str(e):
            raise
        raise ValueError(f"config {path}: {e}") from e


def datasets_of_kind(config: Mapping[str, Any], kind: str = "mri") -> dict[str, Mapping[str, Any]]:
    """The ``datasets.<name>`` entries of one kind: ``mri`` (the default when ``kind`` is unset) or ``slide``."""
    return {name: ds for name, ds in (config.get("datasets") or {}).items()
            if isinstance(ds, Mapping) and ds.get("kind", "mri") == kind}


def with_options(base: T, options: Mapping[str, Any], where: str) -> T:
    """``base`` with the fields named in ``options`` replaced: the ``**options`` of a function that takes
    a settings dataclass (keyword arguments MONAI-style, each a field of the dataclass).

    Raises:
        ValueError: an option that is not a field of ``base`` (message names ``where`` and the valid ones).
    """
    valid = sorted(f.name for f in dataclasses.fields(base))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; valid: {valid}")
    return dataclasses.replace(base, **options) if options else base
