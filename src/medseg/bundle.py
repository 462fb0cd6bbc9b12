"""Model bundles: everything needed to segment a new patient's raw scans without the workflow.

A bundle is one folder::

    bundle.json        task (modalities, labels, regions), preprocessing recipe and settings,
                       inference settings, provenance
    normalizers.json   every fold's fitted intensity normaliser (training cases only)
    fold_<k>/model.pt  the trained weights of each fold

:func:`medseg.bundle_predict.predict_raw` runs the same stage functions the workflow runs (N4 and resampling,
registration, skull stripping, normalisation, fold-ensemble inference, return to the native
grid), so a bundle's label map of a case equals the workflow's prediction of it. The
``medseg predict -i ... -m BUNDLE -o ...`` command is the ``nnUNetv2_predict`` experience.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from medseg.io import InputError, read_json, write_json
from medseg.tasks.definition import Task

log = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.json"
BUNDLE_VERSION = 1


def export_bundle(out_dir: str | Path, task: Task, normalizers: str | Path, models: Sequence[str | Path],
                  settings: Mapping) -> Path:
    """Write a bundle folder (atomically: built beside ``out_dir`` and renamed onto it).

    ``settings``: ``reference``, ``steps`` {n4, register, skullstrip}, ``spacing_mm``, ``n4``,
    ``register``, ``skullstrip``, ``normalize``, ``inference`` (config sections as the workflow
    resolved them for this dataset).
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copyfile(normalizers, tmp / "normalizers.json")
        for k, m in enumerate(models):
            (tmp / f"fold_{k}").mkdir()
            shutil.copyfile(m, tmp / f"fold_{k}" / "model.pt")
        write_json({"version": BUNDLE_VERSION, "task": task.to_dict(), "n_folds": len(models), **dict(settings)},
                   tmp / BUNDLE_FILE)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("model bundle (%d fold(s), task %s) -> %s", len(models), task.name, out)
    return out


def load_bundle(bundle_dir: str | Path) -> dict:
    path = Path(bundle_dir) / BUNDLE_FILE
    if not path.exists():
        raise InputError(f"{bundle_dir} is not a medseg model bundle (no {BUNDLE_FILE}); the workflow writes one to "
                         "results/<dataset>/bundles/<model>/")
    meta = read_json(path)
    if meta.get("version") != BUNDLE_VERSION:
        raise InputError(f"{path}: bundle version {meta.get('version')} is not supported (expected {BUNDLE_VERSION})")
    return meta


__all__ = ["BUNDLE_FILE", "export_bundle", "load_bundle"]
