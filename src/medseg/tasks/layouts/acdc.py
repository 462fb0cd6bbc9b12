"""The ACDC layout (MICCAI 2017 Automated Cardiac Diagnosis Challenge): one folder per patient.

``<root>/training/patientNNN/`` and ``<root>/testing/patientNNN/`` (or patient folders directly
in ``<root>``), each holding

* ``Info.cfg``: ``ED: 1``, ``ES: 12``, ``Group: DCM``, ``Height: 184.0``, ``NbFrame: 30``,
  ``Weight: 95.0`` (the challenge's original test set has no ``Group``);
* ``patientNNN_4d.nii.gz``: the short-axis cine, ``(x, y, z, t)``;
* ``patientNNN_frameFF.nii.gz`` for the ED and ES frame numbers ``FF`` (1-based, two digits)
  and ``patientNNN_frameFF_gt.nii.gz``: labels 1 RV cavity, 2 myocardium, 3 LV cavity.

Each frame is a case, ``patientNNN_ED`` and ``patientNNN_ES``, labelled when its ``_gt`` file
exists (else predicted, not scored). What ``Info.cfg`` says becomes case-sheet columns
(``patient``, ``phase``, ``frame``, ``group``, ``height_cm``, ``weight_kg``, ``nb_frames``,
``subset``); both frames of a patient share a split (:data:`~medseg.tasks.layouts.base.GROUP_KEY`).
The 4-D cine is not used, unless ``cine_frames``: then each of its ``NbFrame`` frames is an
unlabelled case ``patientNNN_cineFF`` (channel ``FF - 1`` of the 4-D file), predicted.

One modality, cine bSSFP (``cine``); labels ``{RV: 1, MYO: 2, LV: 3}``. Slices are thick
(5-10 mm) and each patient has its own in-plane grid: the generic recipe's ``spacing_mm`` (a
``null`` axis keeps each case's own spacing) puts them on one working grid.
"""
from __future__ import annotations

import re
from pathlib import Path

from medseg.io import InputError
from medseg.tasks.layouts.base import CaseFiles, Discovery, check_case_id, hidden, split_ext

MODALITIES = ("cine",)
LABELS = {"RV": 1, "MYO": 2, "LV": 3}
SUBSETS = ("training", "testing")
PHASES = ("ED", "ES")
PATIENT = re.compile(r"^patient\d+$")
#: Info.cfg key -> case-sheet column
INFO_COLUMNS = {"Group": "group", "Height": "height_cm", "Weight": "weight_kg", "NbFrame": "nb_frames"}
EXPECTED = ("training/patientNNN/ (or testing/) with Info.cfg, patientNNN_frameFF.nii.gz and "
            "patientNNN_frameFF_gt.nii.gz (ACDC)")


def _patient_dirs(root: Path) -> list[tuple[str, Path]]:
    """``(subset, folder)`` of every patient folder: under training/ and testing/, else in ``root``."""
    subsets = [(s, root / s) for s in SUBSETS if (root / s).is_dir()]
    if not subsets:
        subsets = [("", root)]
    return [(s, d) for s, folder in subsets for d in sorted(folder.iterdir())
            if d.is_dir() and not hidden(d.name) and PATIENT.match(d.name)]


def looks_like(root: Path) -> bool:
    """Some ``patientNNN`` folder (in ``root``, ``training/`` or ``testing/``) holds an ``Info.cfg``."""
    return any((d / "Info.cfg").is_file() for _, d in _patient_dirs(root)[:20])


def read_info(path: Path) -> dict[str, str]:
    """``Info.cfg`` as ``{key: value}`` (``"ED: 1"`` lines; blank and malformed lines skipped)."""
    info = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            info[key.strip()] = value.strip()
    return info


def _frame(info: dict[str, str], phase: str, cfg: Path) -> int:
    try:
        n = int(float(info[phase]))
    except KeyError as e:
        raise InputError(f"{cfg} has no '{phase}:' line (the {phase} frame number)") from e
    except ValueError as e:
        raise InputError(f"{cfg}: '{phase}: {info[phase]}' is not a frame number") from e
    if n < 1:
        raise InputError(f"{cfg}: '{phase}: {n}': frame numbers start at 1")
    return n


def _files(folder: Path) -> dict[str, Path]:
    """Image file stem -> file, of the NIfTI/MHA/NRRD files in ``folder``."""
    out = {}
    for p in sorted(folder.iterdir()):
        stem, ext = split_ext(p.name)
        if ext and p.is_file() and not hidden(p.name):
            out.setdefault(stem, p)
    return out


def _patient(subset: str, folder: Path, cine_frames: bool) -> tuple[dict[str, CaseFiles], dict[str, str], set[Path]]:
    """(cases, problems, files used) of one patient folder."""
    pid = folder.name
    cfg = folder / "Info.cfg"
    if not cfg.is_file():
        return {}, {pid: f"patient folder {folder} has no Info.cfg: expected {EXPECTED}"}, set()
    info = read_info(cfg)
    files = _files(folder)
    meta = {"patient": pid, "subset": subset, **{col: info.get(key, "") for key, col in INFO_COLUMNS.items()}}
    cases: dict[str, CaseFiles] = {}
    problems: dict[str, str] = {}
    used = {cfg}
    for phase in PHASES:
        case = f"{pid}_{phase}"
        try:
            n = _frame(info, phase, cfg)
        except InputError as e:
            problems[case] = f"case {case}: {e}"
            continue
        image, seg = files.get(f"{pid}_frame{n:02d}"), files.get(f"{pid}_frame{n:02d}_gt")
        if image is None:
            frames = sorted(s[len(pid) + 6:] for s in files if re.fullmatch(rf"{pid}_frame\d+", s))
            problems[case] = (f"case {case}: {cfg} names {phase} frame {n}, but {pid}_frame{n:02d}.nii.gz is not in "
                              f"{folder} (frames there: {', '.join(frames) or 'none'}); fix Info.cfg or copy the frame")
            continue
        used |= {image, *([seg] if seg else [])}
        cases[case] = CaseFiles({"cine": str(image)}, seg=str(seg) if seg else None,
                                meta={**meta, "phase": phase, "frame": str(n)})
    cine = files.get(f"{pid}_4d")
    if cine_frames:
        if cine is None:
            problems[f"{pid}_cine"] = f"patient {pid}: cine_frames is on but {pid}_4d.nii.gz is not in {folder}"
        else:
            cases.update(_cine_cases(pid, cine, info, cfg, meta, problems))
            used.add(cine)
    return cases, problems, used


def _cine_cases(pid: str, cine: Path, info: dict[str, str], cfg: Path, meta: dict[str, str],
                problems: dict[str, str]) -> dict[str, CaseFiles]:
    """The frames of the 4-D cine as unlabelled cases ``<pid>_cineFF`` (``NbFrame`` of ``Info.cfg``)."""
    try:
        n = int(float(info["NbFrame"]))
    except (KeyError, ValueError):
        problems[f"{pid}_cine"] = f"patient {pid}: cine_frames is on but {cfg} has no 'NbFrame:' number"
        return {}
    return {f"{pid}_cine{t:02d}": CaseFiles({"cine": str(cine)}, channels={"cine": t - 1}, series=True,
                                            meta={**meta, "phase": "cine", "frame": str(t)}) for t in range(1, n + 1)}


def discover(root: str | Path, cine_frames: bool = False) -> Discovery:
    """Every ED/ES frame of every patient under ``root`` (and, with ``cine_frames``, every cine
    frame); unusable frames and folders with their reason."""
    root = Path(root)
    cases: dict[str, CaseFiles] = {}
    problems: dict[str, str] = {}
    ignored: list[str] = []
    for subset, folder in _patient_dirs(root):
        try:
            check_case_id(folder.name)
        except InputError as e:
            problems[folder.name] = str(e)
            continue
        if any(c.startswith(f"{folder.name}_") for c in [*cases, *problems]):
            problems[f"{folder.name} ({subset})"] = f"patient {folder.name} is in more than one folder; keep one"
            continue
        found, why, used = _patient(subset, folder, cine_frames)
        cases.update(found)
        problems.update(why)
        rel = folder.relative_to(root)
        ignored += [f"{rel}/{p.name}" for p in sorted(folder.iterdir()) if p.is_file() and not hidden(p.name)
                    and p not in used]
    return Discovery("acdc", str(root), dict(sorted(cases.items())), problems, tuple(ignored), MODALITIES,
                     dict(LABELS), {})
