"""The nnU-Net v2 raw layout: ``dataset.json`` plus ``imagesTr/``, ``labelsTr/``, ``imagesTs/``.

``dataset.json`` gives ``channel_names`` (``{"0": "T2", "1": "ADC"}``), ``labels``
(name -> value, ``background`` 0; region-based datasets give lists of values and
``regions_class_order``) and ``file_ending``. Images are ``<case>_<XXXX><file_ending>`` (one file
per channel), label maps ``labelsTr/<case><file_ending>``. ``imagesTs`` cases are unlabelled
(predicted, not scored), unless ``labelsTs`` holds their label maps. Every file is accounted for:
a label map without images, a channel ``dataset.json`` does not declare, or two files that could
be one image make a problem (the case is listed as excluded, with the reason), never a silent drop.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from medseg.io import InputError
from medseg.tasks.layouts.base import CaseFiles, Discovery, check_case_id, hidden, modality_key, twin_problem, twins

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
    found = _Found({}, {}, [])
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        if not (root / images_dir).is_dir():
            if images_dir == "imagesTr":
                raise InputError(f"{root} has dataset.json but no imagesTr/ folder: expected imagesTr/<case>_0000{ending}")
            continue
        _read_split(root, (images_dir, labels_dir), ending, mods, found)
    return Discovery("nnunet", str(root), dict(sorted(found.cases.items())), found.problems, tuple(found.ignored), mods,
                     labels, regions)


@dataclass
class _Found:
    cases: dict[str, CaseFiles]
    problems: dict[str, str]
    ignored: list[str]


def _listing(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not hidden(p.name)) if folder.is_dir() else []


def _read_split(root: Path, dirs: tuple[str, str], ending: str, mods: tuple[str, ...], out: _Found) -> None:
    """The cases of one split (``imagesTr`` + ``labelsTr``, or ``imagesTs`` + ``labelsTs``) into ``out``.

    Every file is accounted for: a case, a problem (a missing or undeclared channel, a training case
    without label map, a label map without images, files that could be the same image) or ignored
    (another file type: logged).
    """
    images_dir, labels_dir = dirs
    folder, label_files = root / images_dir, _listing(root / labels_dir)
    found: dict[str, dict[int, Path]] = {}
    files = _listing(folder)
    for p in files:
        m = CHANNEL.match(p.name[: -len(ending)]) if p.name.endswith(ending) else None
        if m is None:
            out.ignored.append(f"{images_dir}/{p.name}")
            continue
        found.setdefault(m["case"], {})[int(m["ch"])] = p
    same = {**twins(p.name for p in files), **twins(p.name for p in label_files)}
    for case, chans in found.items():
        why = _case_problem(case, chans, root / labels_dir / f"{case}{ending}", (folder, ending, mods), same)
        if why is None and case in out.cases:
            why = f"case {case} is in both imagesTr and imagesTs"
            del out.cases[case]
        if why is not None:
            out.problems[case] = why
            continue
        seg = root / labels_dir / f"{case}{ending}"
        if images_dir == "imagesTr" and not seg.exists():
            out.problems[case] = f"case {case}: training case without label map {seg}"
            continue
        out.cases[case] = CaseFiles(images={m: str(chans[i]) for i, m in enumerate(mods)},
                                    seg=str(seg) if seg.exists() else None)
    for p in label_files:
        case = p.name[: -len(ending)] if p.name.endswith(ending) else None
        if case is None:
            out.ignored.append(f"{labels_dir}/{p.name}")
        elif case not in found:
            out.cases.pop(case, None)
            out.problems[case] = (f"case {case}: label map {labels_dir}/{p.name} has no images (expected "
                                  f"{images_dir}/{case}_0000{ending}); add its images or remove it")


def _case_problem(case: str, chans: dict[int, Path], seg: Path, where: tuple[Path, str, tuple[str, ...]],
                  same: dict[str, tuple[str, ...]]) -> str | None:
    """Why the images ``chans`` (channel -> file) of ``case`` make no usable case, or None."""
    folder, ending, mods = where
    try:
        check_case_id(case)
    except InputError as e:
        return str(e)
    missing = [f"{case}_{i:04d}{ending}" for i in range(len(mods)) if i not in chans]
    if missing:
        return f"case {case}: missing {', '.join(missing)} in {folder}"
    extra = sorted(set(chans) - set(range(len(mods))))
    if extra:
        return (f"case {case}: {', '.join(chans[i].name for i in extra)} in {folder}: a channel that dataset.json "
                f"does not declare (channel_names declares {len(mods)}: {list(mods)}); remove it or declare it")
    doubled = next((same[f.name] for f in (*chans.values(), seg) if f.name in same), None)
    return twin_problem(case, seg.parent if seg.name in same else folder, doubled) if doubled else None
