"""Dataset layouts on disk: a registry of discoverers; the layout is detected, never guessed.

A folder with ``dataset.json`` is nnU-Net v2 raw (``channel_names``) or the original Decathlon
(``modality``); a folder of case folders with BraTS-named scans is BraTS (2021 or 2023+ per
case folder); ``patientNNN`` folders with ``Info.cfg`` are ACDC; MetaImage ``CaseNN.mhd`` files
(with ``CaseNN_segmentation.mhd``) are PROMISE12. A folder that fits none says what each layout
expects.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medseg.io import InputError
from medseg.tasks.layouts import acdc, brats, msd, nnunet, promise12
from medseg.tasks.layouts.base import CaseFiles, Discovery, check_case_id

LAYOUTS: dict[str, Callable[..., Discovery]] = {"brats": brats.discover, "nnunet": nnunet.discover, "msd": msd.discover,
                                                 "acdc": acdc.discover, "promise12": promise12.discover}


def detect_layout(root: str | Path) -> str:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist; set datasets.<name>.source to a dataset folder or 'demo'")
    if (root / "dataset.json").exists():
        meta = nnunet.read_dataset_json(root)
        if "channel_names" in meta:
            return "nnunet"
        if "modality" in meta:
            return "msd"
        raise InputError(f"{root / 'dataset.json'} has neither 'channel_names' (nnU-Net v2) nor 'modality' "
                         "(Medical Segmentation Decathlon)")
    if brats.looks_like(root):
        return "brats"
    if acdc.looks_like(root):
        return "acdc"
    if promise12.looks_like(root):
        return "promise12"
    raise InputError(f"{root} fits no known layout: expected dataset.json with imagesTr/ and labelsTr/ "
                     "(nnU-Net v2 raw or Medical Segmentation Decathlon), or BraTS case folders "
                     "<case>/<case>_t1ce.nii.gz (2021) or <case>/<case>-t1c.nii.gz (2023+), "
                     f"or {acdc.EXPECTED}, or {promise12.EXPECTED}")


def discover(root: str | Path, layout: str | None = None, **kwargs) -> Discovery:
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    return LAYOUTS[layout](root, **kwargs)


__all__ = ["LAYOUTS", "CaseFiles", "Discovery", "check_case_id", "detect_layout", "discover"]
