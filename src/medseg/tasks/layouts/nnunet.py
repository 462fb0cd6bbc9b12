"""The nnU-Net v2 raw layout: ``dataset.json`` plus ``imagesTr/``, ``labelsTr/``, ``imagesTs/``.

``dataset.json`` gives ``channel_names`` (``{"0": "T2", "1": "ADC"}``), ``labels``
(name -> value, ``background`` 0; region-based datasets give lists of values and
``regions_class_order``) and ``file_ending``. Images are ``<case>_<XXXX><file_ending>`` (one file
per channel), label maps ``labelsTr/<case><file_ending>``. ``imagesTs`` cases are unlabelled
(predicted, not scored), unless ``labelsTs`` holds their label maps.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from medseg.io import InputError
from medseg.tasks.layouts.base import CaseFiles, Discovery, check_case_id, hidden, modality_key

CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def read_dataset_json(root: Path) -> dict:
    path = root / "dataset.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path} cannot be read as JSON: {e}") from e


def labels_and_regions(raw: dict, path: Path) -> tuple[dict[str, int], dict[str, tuple[str, ...]]]:
    """nnU-Net ``labels`` -> (labels ``{name: value}``, regions ``{name: label names}``)."""
    labels: dict[str, int] = {}
    regions: dict[str, tuple[int, ...]] = {}
    for name, v in raw.items():
        if isinstance(v, list):
            regions[name] = tuple(int(x) for x in v)
        elif int(v) != 0:
            labels[name] = int(v)
    if not regions:
        return labels, {}
    values = sorted({x for vs in regions.values() for x in vs} - {0})
    by_value = {v: n for n, v in labels.items()}
    names = {v: by_value.get(v, f"label{v}") for v in values}
    if not labels:
        labels = {names[v]: v for v in values}
    return labels, {r: tuple(names[v] for v in vs if v) for r, vs in regions.items()}


def discover(root: str | Path) -> Discovery:
    root = Path(root)
    meta = read_dataset_json(root)
    ending = meta.get("file_ending", ".nii.gz")
    if "channel_names" not in meta or "labels" not in meta:
        raise InputError(f"{root / 'dataset.json'} has no 'channel_names' and 'labels': not an nnU-Net v2 dataset.json")
    order = sorted(meta["channel_names"], key=int)
    mods = tuple(modality_key(meta["channel_names"][k]) for k in order)
    labels, regions = labels_and_regions(meta["labels"], root / "dataset.json")
    cases: dict[str, CaseFiles] = {}
    problems: dict[str, str] = {}
    ignored: list[str] = []
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        folder = root / images_dir
        if not folder.is_dir():
            if images_dir == "imagesTr":
                raise InputError(f"{root} has dataset.json but no imagesTr/ folder: expected imagesTr/<case>_0000{ending}")
            continue
        found: dict[str, dict[int, Path]] = {}
        for p in sorted(folder.iterdir()):
            if hidden(p.name):
                continue
            m = CHANNEL.match(p.name[: -len(ending)]) if p.name.endswith(ending) else None
            if m is None:
                ignored.append(f"{images_dir}/{p.name}")
                continue
            found.setdefault(m["case"], {})[int(m["ch"])] = p
        for case, chans in found.items():
            try:
                check_case_id(case)
            except InputError as e:
                problems[case] = str(e)
                continue
            if case in cases:
                problems[case] = f"case {case} is in both imagesTr and imagesTs"
                continue
            missing = [f"{case}_{i:04d}{ending}" for i in range(len(mods)) if i not in chans]
            if missing:
                problems[case] = f"case {case}: missing {', '.join(missing)} in {folder}"
                continue
            extra = sorted(set(chans) - set(range(len(mods))))
            ignored.extend(f"{images_dir}/{chans[i].name}" for i in extra)
            seg = root / labels_dir / f"{case}{ending}"
            if images_dir == "imagesTr" and not seg.exists():
                problems[case] = f"case {case}: training case without label map {seg}"
                continue
            cases[case] = CaseFiles(images={m: str(chans[i]) for i, m in enumerate(mods)},
                                    seg=str(seg) if seg.exists() else None)
    return Discovery("nnunet", str(root), dict(sorted(cases.items())), problems, tuple(ignored), mods, labels, regions)
