"""Model bundles: everything needed to segment a new patient's raw scans without the workflow.

A bundle is one folder::

    bundle.json        format version, the model key, the number of folds, each file's SHA-256
    plan.json          the dataset's resolved plan (:mod:`medseg.plan`): task, preprocessing recipe,
                       every model key's run; the same content as results/<dataset>/plan.json
    normalizers.json   every fold's fitted intensity normaliser (training cases only)
    fold_<k>/model.pt  the trained weights of each fold

:func:`medseg.inference.predict.predict_raw` runs the plan's stages through the same functions
the workflow's rules call, so a bundle's label map of a case equals the workflow's prediction of
it. ``medseg predict -i ... -m BUNDLE -o ...`` is the ``nnUNetv2_predict`` experience.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medseg.io import InputError, sha256, write_json
from medseg.plan.resolved import PLAN_FILE, Plan, read_plan, write_plan
from medseg.plan.runs import ModelRun

log = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.json"
BUNDLE_VERSION = 2
NORMALIZERS = "normalizers.json"


def fold_file(k: int) -> str:
    return f"fold_{k}/model.pt"


@dataclass(frozen=True)
class Bundle:
    """A verified bundle folder: its plan, the model key it holds and its fold weights."""

    root: Path
    plan: Plan
    model: str
    n_folds: int

    @property
    def run(self) -> ModelRun:
        return self.plan.run(self.model)

    @property
    def normalizers(self) -> str:
        return str(self.root / NORMALIZERS)

    @property
    def models(self) -> list[str]:
        return [str(self.root / fold_file(k)) for k in range(self.n_folds)]


def export_bundle(out_dir: str | Path, plan: Plan, model: str, normalizers: str | Path,
                  models: Sequence[str | Path]) -> Path:
    """Write a bundle folder (atomically: built beside ``out_dir`` and renamed onto it).

    ``plan``: the dataset's plan with its resolved task; ``model``: the model key of ``models``
    (one ``model.pt`` per fold).
    """
    plan.run(model)  # a key of the plan
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copyfile(normalizers, tmp / NORMALIZERS)
        for k, m in enumerate(models):
            (tmp / f"fold_{k}").mkdir()
            shutil.copyfile(m, tmp / fold_file(k))
        write_plan(plan, tmp / PLAN_FILE)
        files = [PLAN_FILE, NORMALIZERS, *(fold_file(k) for k in range(len(models)))]
        write_json({"version": BUNDLE_VERSION, "model": model, "n_folds": len(models),
                    "sha256": {f: sha256(tmp / f) for f in files}}, tmp / BUNDLE_FILE)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("model bundle (%s, %d fold(s), task %s) -> %s", model, len(models), plan.task.name, out)
    return out


def _fix(root: Path, meta: object) -> str:
    """How to get a good bundle back, with the dataset and model named when the bundle still says them."""
    model = meta.get("model") if isinstance(meta, dict) and isinstance(meta.get("model"), str) else "<model>"
    try:
        dataset = json.loads((root / PLAN_FILE).read_text())["dataset"]
    except Exception:  # a broken plan.json names no dataset; the fix still says where bundles come from
        dataset = "<dataset>"
    return (f"rebuild it: snakemake results/{dataset}/bundles/{model} (the workflow's export_bundle rule), "
            "or copy the bundle folder again")


def load_bundle(bundle_dir: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle; with ``verify`` check every file against its SHA-256 first (seconds, before any work).

    Raises:
        InputError: one line naming the bundle, the file and the fix (not a bundle, an older
            format, a broken ``bundle.json``, a missing, truncated or altered file).
    """
    root = Path(bundle_dir)
    path = root / BUNDLE_FILE
    if not path.exists():
        raise InputError(f"{root} is not a medseg model bundle (no {BUNDLE_FILE}); the workflow writes one to "
                         "results/<dataset>/bundles/<model>/")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"bundle {root}: {BUNDLE_FILE} is not valid JSON ({e}); {_fix(root, None)}") from e
    if not isinstance(meta, dict) or meta.get("version") != BUNDLE_VERSION:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise InputError(f"bundle {root}: format version {version} is not supported (this medseg reads "
                         f"{BUNDLE_VERSION}); {_fix(root, meta)}")
    digests = meta.get("sha256")
    try:
        n_folds = int(meta["n_folds"])
        model = str(meta["model"])
        expected = {PLAN_FILE, NORMALIZERS, *(fold_file(k) for k in range(n_folds))}
        if not isinstance(digests, dict) or not expected <= set(digests):
            raise ValueError(f"its sha256 table does not list {sorted(expected - set(digests or {}))}")
    except (KeyError, TypeError, ValueError) as e:
        why = f"no key {e}" if isinstance(e, KeyError) else str(e)
        raise InputError(f"bundle {root}: {BUNDLE_FILE} is incomplete ({why}); {_fix(root, meta)}") from e
    if verify:
        for name, digest in digests.items():
            f = root / name
            if not f.is_file():
                raise InputError(f"bundle {root}: {name} is missing; {_fix(root, meta)}")
            if sha256(f) != digest:
                raise InputError(f"bundle {root}: {name} does not match its SHA-256 in {BUNDLE_FILE} (truncated "
                                 f"or altered); {_fix(root, meta)}")
    return Bundle(root, read_plan(root / PLAN_FILE), model, n_folds)


__all__ = ["BUNDLE_FILE", "Bundle", "export_bundle", "load_bundle"]
