"""Provenance facts attached to every results file and MLflow run.

Deterministic facts (config hash, seeds, input checksums, package versions, git commit) are kept
apart from volatile ones (time, host) so two identical runs give identical results files
outside the ``provenance.volatile`` block.
"""
from __future__ import annotations

import hashlib
import json
import platform
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from medseg.io import sha256

PACKAGES = ("medseg", "numpy", "scipy", "SimpleITK", "itk-elastix", "torch", "timm", "snakemake", "mlflow-skinny", "nibabel", "nilearn")


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of ``config``."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_state(path: str | Path = ".") -> dict[str, Any]:
    """Commit hash and dirty flag of the repository holding ``path`` (``None`` outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def digest(checksums: Mapping[str, str]) -> str:
    """One SHA-256 (16 hex digits) over ``{path: sha256}``: equal iff the same files had the same bytes."""
    blob = json.dumps(sorted(checksums.items())).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def checksums(paths: Iterable[str | Path]) -> dict[str, str]:
    return {str(p): sha256(p) for p in sorted(map(str, paths))}


def collect(config: Mapping[str, Any] | None = None, inputs: Iterable[str | Path] = (), seeds: Mapping[str, int] | None = None,
            rule: str | None = None, wildcards: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything needed to trace a result back to what produced it."""
    return {
        "config_hash": config_hash(config or {}),
        "git": git_state(Path(__file__).parent),
        "packages": package_versions(),
        "seeds": dict(seeds or {}),
        "inputs": checksums(inputs),
        "rule": rule,
        "wildcards": dict(wildcards or {}),
        "volatile": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "python": platform.python_version()},
    }
