"""Provenance facts attached to every results file and MLflow run.

Deterministic facts (config hash, seeds, input checksums, package versions, git commit) are kept
apart from volatile ones (time, host) so two identical runs give identical results files
outside the ``provenance.volatile`` block.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import platform
import socket
import subprocess
import time
import zipfile
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from medseg.io import sha256

PACKAGES = ("medseg", "numpy", "scipy", "SimpleITK", "itk-elastix", "torch", "timm", "snakemake", "mlflow", "nibabel", "nilearn")


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


class _Stub:
    """Stands in for any class a torch checkpoint's pickle names (reading without torch)."""

    def __init__(self, *args, **kwargs) -> None:
        self.args = args

    def __setstate__(self, state) -> None:
        self.state = state


class _Tensor:
    def __init__(self, size) -> None:
        self.numel = math.prod(int(s) for s in size)


def _rebuild_tensor(storage, offset, size, *args, **kwargs) -> _Tensor:
    return _Tensor(size)


def _read_torch_pickle(path: str | Path) -> Any:
    """The object of a ``torch.save`` zip file, tensors replaced by their element counts, without
    importing torch (the evaluate env has none); anything else torch-specific becomes a stub."""
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("data.pkl"))

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, qualname: str):
                if qualname.startswith("_rebuild_tensor") or qualname == "_rebuild_parameter":
                    return _rebuild_tensor if qualname.startswith("_rebuild_tensor") else (lambda t, *a, **k: t)
                if module in ("collections", "builtins") and qualname in ("OrderedDict", "dict", "list", "tuple", "set"):
                    return super().find_class(module, qualname)
                return _Stub

            def persistent_load(self, pid):
                return None

        return Unpickler(io.BytesIO(zf.read(name))).load()


BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def model_facts(model_pt: str | Path) -> dict[str, Any]:
    """Architecture, encoder, parameter count and SHA-256 of a trained ``model.pt`` (``medseg.training.loop``:
    ``{"state_dict", "meta": {"model_config", ...}}``). Parameters exclude normalisation buffers."""
    obj = _read_torch_pickle(model_pt)
    state = obj.get("state_dict", {}) if isinstance(obj, dict) else {}
    meta = obj.get("meta", {}) if isinstance(obj, dict) else {}
    mcfg = meta.get("model_config", {}) if isinstance(meta, dict) else {}
    n = sum(t.numel for k, t in state.items() if isinstance(t, _Tensor) and not k.endswith(BUFFER_SUFFIXES))
    return {"arch": mcfg.get("arch"), "encoder": mcfg.get("encoder"), "n_parameters": int(n),
            "sha256": sha256(model_pt), "model_config": mcfg}


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
