"""The original Medical Segmentation Decathlon layout: ``dataset.json`` with ``modality``,
``labels`` (value -> name), ``training`` (image/label pairs) and ``test`` (images only).

Images with several modalities are 4-D files ``(x, y, z, channel)``: every modality of a case
points at the same file with its channel index. ``test`` cases are unlabelled.
"""
from __future__ import annotations

from pathlib import Path

from medseg.io import InputError
from medseg.tasks.layouts.base import CaseFiles, Discovery, check_case_id, hidden, modality_key, split_ext
from medseg.tasks.layouts.nnunet import read_dataset_json


def discover(root: str | Path) -> Discovery:
    root = Path(root)
    meta = read_dataset_json(root)
    if "modality" not in meta or "labels" not in meta:
        raise InputError(f"{root / 'dataset.json'} has no 'modality' and 'labels': not a Decathlon dataset.json")
    order = sorted(meta["modality"], key=int)
    mods = tuple(modality_key(meta["modality"][k]) for k in order)
    labels = {str(name): int(v) for v, name in meta["labels"].items() if int(v) != 0}
    entries = [(e["image"], e.get("label")) for e in meta.get("training", [])]
    entries += [(e if isinstance(e, str) else e["image"], None) for e in meta.get("test", [])]
    cases: dict[str, CaseFiles] = {}
    problems: dict[str, str] = {}
    listed: set[Path] = set()
    for image, label in entries:
        img = (root / image).resolve()
        case = split_ext(img.name)[0]
        try:
            check_case_id(case)
        except InputError as e:
            problems[case] = str(e)
            continue
        if not img.exists():
            problems[case] = f"case {case}: {img} is listed in dataset.json but does not exist"
            continue
        seg = (root / label).resolve() if label else None
        if seg is not None and not seg.exists():
            problems[case] = f"case {case}: label map {seg} is listed in dataset.json but does not exist"
            continue
        listed |= {img, *([seg] if seg else [])}
        cases[case] = CaseFiles(images={m: str(img) for m in mods}, channels={m: i for i, m in enumerate(mods)},
                                seg=str(seg) if seg else None)
    ignored = []
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        if (root / sub).is_dir():
            ignored += [f"{sub}/{p.name}" for p in sorted((root / sub).iterdir())
                        if not hidden(p.name) and p.resolve() not in listed]
    return Discovery("msd", str(root), dict(sorted(cases.items())), problems, tuple(ignored), mods, labels, {})
