"""The original Medical Segmentation Decathlon layout: ``dataset.json`` with ``modality``,
``labels`` (value -> name), ``training`` (image/label pairs) and ``test`` (images only).

Images with several modalities are 4-D files ``(x, y, z, channel)``: every modality of a case
points at the same file with its channel index (the case sheet checks the channel count). ``test``
cases are unlabelled. Every image or label file in ``imagesTr``/``labelsTr``/``imagesTs`` is
accounted for: an id listed twice (e.g. in ``training`` and ``test``), a file ``dataset.json`` does
not list, or a file that could be the same image as a listed one makes a problem (the case is
listed as excluded, with the reason), never a silent choice.
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
    entries = [("training", e["image"], e.get("label")) for e in meta.get("training", [])]
    entries += [("test", e if isinstance(e, str) else e["image"], None) for e in meta.get("test", [])]
    cases: dict[str, CaseFiles] = {}
    problems: dict[str, str] = {}
    listed: dict[Path, str] = {}  # file -> its case
    for section, image, label in entries:
        img = (root / image).resolve()
        case = split_ext(img.name)[0]
        why = _entry_problem(case, img, (root / label).resolve() if label else None)
        if why is None and case in listed.values():
            first = next(f for f, c in listed.items() if c == case)
            why = (f"case {case}: dataset.json lists it twice ({first.relative_to(root)} and '{section}' "
                   f"{img.relative_to(root)}; e.g. in both 'training' and 'test'): give one another id or remove it")
        if why is not None:
            cases.pop(case, None)
            problems.setdefault(case, why)
            listed[img] = case  # accounted for by the problem
            continue
        seg = (root / label).resolve() if label else None
        listed.update({img: case, **({seg: case} if seg else {})})
        cases[case] = CaseFiles(images={m: str(img) for m in mods}, channels={m: i for i, m in enumerate(mods)},
                                seg=str(seg) if seg else None)
    ignored = _unlisted(root, listed, cases, problems)
    return Discovery("msd", str(root), dict(sorted(cases.items())), problems, tuple(ignored), mods, labels, {})


def _entry_problem(case: str, img: Path, seg: Path | None) -> str | None:
    try:
        check_case_id(case)
    except InputError as e:
        return str(e)
    if not img.exists():
        return f"case {case}: {img} is listed in dataset.json but does not exist"
    if seg is not None and not seg.exists():
        return f"case {case}: label map {seg} is listed in dataset.json but does not exist"
    return None


def _unlisted(root: Path, listed: dict[Path, str], cases: dict[str, CaseFiles], problems: dict[str, str]) -> list[str]:
    """Files of ``imagesTr``/``labelsTr``/``imagesTs`` that ``dataset.json`` does not list: images and
    label maps make their case a problem (a case of its own, or a twin of a listed file); other files
    are returned (ignored: logged)."""
    ignored, unlisted = [], {}
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        if (root / sub).is_dir():
            for p in sorted((root / sub).iterdir()):
                if hidden(p.name) or p.resolve() in listed:
                    continue
                if split_ext(p.name)[1]:
                    unlisted.setdefault(split_ext(p.name)[0], []).append(f"{sub}/{p.name}")
                else:
                    ignored.append(f"{sub}/{p.name}")
    names = {split_ext(f.name)[0].lower(): c for f, c in listed.items()}
    for case, files in unlisted.items():
        twin = names.get(case.lower())
        if twin is not None:
            cases.pop(twin, None)
            problems.setdefault(twin, f"case {twin}: {', '.join(files)} could be the same image as a file dataset.json "
                                      "lists for it (names equal up to letter case and file type): keep one, delete or "
                                      "rename the other")
        else:
            problems.setdefault(case, f"case {case}: {', '.join(files)} not listed in {root / 'dataset.json'}: add the "
                                      "case to 'training' or 'test', or move the file(s) out of the dataset folder")
    return ignored
