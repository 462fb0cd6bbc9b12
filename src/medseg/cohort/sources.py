"""A case's source files as delivered: matching them to modalities, checking them, reading them.

One checked reader for every door: the case sheet (:mod:`medseg.cohort.sheet`), ``medseg predict``
(:mod:`medseg.inference.predict`) and ``medseg evaluate`` read and check cases with these
functions, so a case one of them rejects, the others reject with the same message.

* :func:`check_case`: every check of a case's files (headers, layout of 4-D files against the
  declared modalities, one grid, one space without registration, whole readable voxels, label
  values read);
* :func:`header`, :func:`read_source`: a 3-D file, or one channel of a 4-D (Decathlon) file,
  read by the exact path that was listed (:func:`medseg.io.exact_path`);
* :func:`match_modalities`: files given on a command line matched to a task's modalities by
  their names (BraTS suffixes ``_t1ce``/``-t2f``, nnU-Net channels ``_0000``, ``t1=a.nii.gz``).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.io import Grid, InputError, check_header, exact_path, grid_differences, read_image, read_labels
from medseg.tasks.layouts.base import CaseFiles, check_case_id, modality_key, split_ext

log = logging.getLogger(__name__)


def header(path: str | Path, case: str, channel: int | None = None, n_channels: int | None = None) -> Grid:
    """The grid of a 3-D file (every header check of :func:`medseg.io.check_header`), or of
    channel ``channel`` of a 4-D (Decathlon) file, from the header alone.

    ``n_channels``: the number of modalities the dataset declares in this 4-D file; another
    channel count is an error (extra channels would be dropped without a word).
    """
    if channel is None:
        return check_header(path, case)
    reader = sitk.ImageFileReader()
    try:
        with exact_path(path) as exact:
            reader.SetFileName(exact)
            reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"case {case!r}, file {path}: cannot be read (corrupt, truncated or not an image?)") from e
    dim, size = reader.GetDimension(), reader.GetSize()
    if dim == 4:
        if n_channels is not None and size[3] != n_channels:
            raise InputError(f"case {case!r}, file {path}: has {size[3]} channels but the dataset declares "
                             f"{n_channels} modalities (dataset.json 'modality'); fix the declaration or the image")
        if not 0 <= channel < size[3]:
            raise InputError(f"case {case!r}, file {path}: has {size[3]} channels, channel {channel} was expected")
        d = np.array(reader.GetDirection()).reshape(4, 4)[:3, :3]
        return Grid(tuple(size[:3]), tuple(reader.GetSpacing()[:3]), tuple(reader.GetOrigin()[:3]), tuple(d.ravel()))
    if dim != 3 or channel != 0 or (n_channels or 1) != 1:
        raise InputError(f"case {case!r}, file {path}: is {dim}-D with size {size}, expected 4-D with channel "
                         f"{channel} (or a 3-D file for a single-modality dataset)")
    return check_header(path, case)


def read_source(path: str | Path, case: str, channel: int | None = None, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """A source scan, fully checked (:func:`medseg.io.read_image` with ``source=True``); for a 4-D file the
    3-D volume of ``channel`` with the file's spatial geometry."""
    if channel is None:
        return read_image(path, case=case, pixel_type=pixel_type, source=True)
    grid = header(path, case, channel)
    with exact_path(path) as exact:
        img = sitk.ReadImage(exact)
    if img.GetDimension() == 3:
        return read_image(path, case=case, pixel_type=pixel_type, source=True)
    arr = sitk.GetArrayFromImage(img)[channel]  # (c, z, y, x)
    if str(path).endswith(".gz"):
        from medseg.io import _check_gzip_stream

        _check_gzip_stream(path, img.GetNumberOfPixels() * img.GetSizeOfPixelComponent(), f"case {case!r}, file {path}")
    if not np.isfinite(arr).all():
        raise InputError(f"case {case!r}, file {path}: channel {channel}: {int((~np.isfinite(arr)).sum())} voxels are "
                         "NaN or infinite; fix or re-export the scan")
    out = sitk.GetImageFromArray(arr.astype(np.float32))
    out.SetSpacing(grid.spacing)
    out.SetOrigin(grid.origin)
    out.SetDirection(grid.direction)
    return sitk.Cast(out, pixel_type)


def _r(values: Sequence[float]) -> list[float]:
    return [round(v, 3) for v in values]


def _check_grids(case: str, files: CaseFiles, modalities: Sequence[str], same_space: bool) -> None:
    """Headers of every file; one grid (size, spacing) per case; one space (origin, direction) for the
    label map, and for the modalities when ``same_space``."""
    shared = {}
    for m, ch in files.channels.items():
        shared[files.images[m]] = shared.get(files.images[m], 0) + (ch is not None)
    ref_mod = modalities[0]
    ref_path = files.images[ref_mod]

    def grid_of(m: str) -> Grid:
        n_channels = None if files.series else shared.get(files.images[m])  # a cine: frames, not modalities
        return header(files.images[m], case, files.channels.get(m), n_channels)

    ref = grid_of(ref_mod)
    grids = [(m, files.images[m], grid_of(m)) for m in modalities[1:]]
    if files.seg:
        grids.append(("seg", files.seg, check_header(files.seg, case)))
    for key, path, other in grids:
        diff = grid_differences(other, ref)
        if any(d.startswith(("size", "spacing")) for d in diff):
            raise InputError(f"{Path(path).name} has grid {other.size} @ {_r(other.spacing)} mm but "
                             f"{Path(ref_path).name} has {ref.size} @ {_r(ref.spacing)} mm; "
                             "resample all modalities of a case onto one grid")
        if (same_space or key == "seg") and diff:
            why = ("the label map must lie on its images' grid" if key == "seg" else
                   "with steps.register off the modalities are stacked voxel by voxel, so they must share one "
                   "space; turn steps.register on, or resample them onto one grid")
            raise InputError(f"{Path(path).name} has origin {_r(other.origin)} and direction {_r(other.direction)} "
                             f"but {Path(ref_path).name} has {_r(ref.origin)} and {_r(ref.direction)}: {why}")


def check_case(case: str, files: CaseFiles, modalities: Sequence[str], full: bool = True,
               same_space: bool = False) -> np.ndarray | None:
    """Every check of one case's files, as every door makes it; return its label values (``None``: unlabelled).

    Checks, in order: the case id; every file's header (:func:`medseg.io.check_header`: exists, 3-D,
    voxel sizes finite and > 0, orthonormal direction; a 4-D file has as many channels as
    modalities point into it); all modalities on one grid (size and spacing, :func:`medseg.io.grid_differences`);
    the label map, and with ``same_space`` (no registration will align them) the modalities, in
    one space (origin and direction); with ``full`` every voxel of every scan read (truncated gzip
    data, NaN/inf, blank scans); the label map read whole (integer values in 0..255). Label values
    against the task are the caller's (:func:`medseg.cohort.sheet.resolve_task`, evaluation).

    Raises:
        InputError: one line naming the case, the file and the fix.
    """
    try:
        check_case_id(case)
        _check_grids(case, files, modalities, same_space)
        if full:
            for m in modalities:
                read_source(files.images[m], case, files.channels.get(m))
        if not files.seg:
            return None
        seg = read_labels(files.seg, case=case)  # kept alive: the view below is its memory
        values = np.unique(sitk.GetArrayViewFromImage(seg))
    except (InputError, RuntimeError) as e:
        msg = " ".join(str(e).split())
        raise InputError(msg if f"case {case!r}" in msg or msg.startswith(f"case {case}") else f"case {case}: {msg}") from e
    if len(values) <= 1:
        log.warning("case %s: label map %s is empty (no foreground)", case, Path(files.seg).name)
    return values


# ---- files given on a command line -> modalities ---------------------------------------------------
_CHANNEL = re.compile(r"_(\d{4})$")
_SEPARATORS = "_-."


def _aliases(modalities: Sequence[str]) -> dict[str, str]:
    """Name token in a file name -> modality: each modality's own key and its BraTS names (2021 and 2023+)."""
    from medseg.tasks.layouts.brats import SUFFIXES

    out = {}
    for suffixes in SUFFIXES.values():
        for m, suffix in suffixes.items():
            if m in modalities:
                out[suffix.lstrip(_SEPARATORS).lower()] = m
    out.update({modality_key(m): m for m in modalities})
    return out


def modality_in_name(path: str | Path, modalities: Sequence[str]) -> tuple[str | None, str]:
    """``(modality, case stem)`` a file name carries: a modality name (or a BraTS suffix: ``_t1ce``,
    ``-t2f`` ...) or an nnU-Net channel suffix (``_0000``: the modality of that index) at the end of
    its stem; ``(None, stem)`` if it carries none."""
    stem = split_ext(Path(path).name)[0]
    m = _CHANNEL.search(stem)
    if m is not None and int(m.group(1)) < len(modalities):
        return modalities[int(m.group(1))], stem[: m.start()]
    low = stem.lower()
    for token, mod in sorted(_aliases(modalities).items(), key=lambda kv: -len(kv[0])):
        if low.endswith(token) and len(low) > len(token) and low[-len(token) - 1] in _SEPARATORS:
            return mod, stem[: -len(token) - 1]
    return None, stem


def _named(items: Sequence[str], modalities: Sequence[str]) -> dict[str, str]:
    """``modality=file`` items -> modality -> file (aliases accepted: ``t1c=`` is ``t1ce``)."""
    aliases, out = _aliases(modalities), {}
    for item in items:
        key, _, path = item.partition("=")
        mod = aliases.get(key.strip().lower())
        if mod is None:
            raise InputError(f"-i {item}: {key!r} is not a modality of the bundle's task {list(modalities)}")
        if mod in out:
            raise InputError(f"-i names modality {mod} twice: {out[mod]} and {path}")
        says = modality_in_name(path, modalities)[0]
        if says is not None and says != mod:
            raise InputError(f"-i {key}={path}: the file name says it is {says}, not {mod}; check which scan is which "
                             "(or rename the file)")
        out[mod] = path
    return out


def _positional(items: Sequence[str], modalities: Sequence[str]) -> dict[str, str]:
    """Files in the task's modality order, unless every file names its modality (then in any order)."""
    says = [modality_in_name(p, modalities)[0] for p in items]
    seen: dict[str, str] = {}
    for path, mod in zip(items, says):
        if mod is not None and mod in seen:
            raise InputError(f"-i {seen[mod]} and {path} both name modality {mod}; give one file per modality "
                             f"{list(modalities)}")
        if mod is not None:
            seen[mod] = path
    if all(says):
        if says != list(modalities):
            log.info("inputs matched to modalities by their names: %s",
                     ", ".join(f"{Path(p).name} -> {m}" for p, m in zip(items, says)))
        return {m: p for p, m in zip(items, says)}
    for i, (path, mod) in enumerate(zip(items, says)):
        if mod is not None and mod != modalities[i]:
            raise InputError(f"-i {path} (input {i + 1}) is named {mod} but stands where the bundle's task expects "
                             f"{modalities[i]} (order {list(modalities)}); name every input (-i {modalities[0]}=FILE "
                             f"...) or give them in that order")
    return dict(zip(modalities, items))


def match_modalities(items: Sequence[str], modalities: Sequence[str]) -> dict[str, str]:
    """One case's files (``-i`` of ``medseg predict``) -> modality -> file.

    ``items``: files, all named ``modality=file`` (any order; BraTS aliases such as ``t1c`` accepted),
    or all plain: matched by the modality their names carry (:func:`modality_in_name`) when every
    one carries one, in any order; else taken in the task's modality order, and a file whose name
    says another modality than its position is an error naming both.

    Raises:
        InputError: a wrong count, an unknown or repeated modality, a name contradicting the order or
            the given modality.
    """
    named = [i for i in items if "=" in i and not Path(i).exists()]
    if named and len(named) != len(items):
        raise InputError(f"-i: name every input (modality=FILE) or none, got {list(items)}")
    out = _named(items, modalities) if named else None
    if out is None:
        if len(items) != len(modalities):
            raise InputError(f"-i got {len(items)} file(s) but the bundle's task has {len(modalities)} modalities "
                             f"{list(modalities)}: give one file per modality, in that order or named "
                             f"(-i {modalities[0]}=FILE ...)")
        out = _positional(items, modalities)
    missing = [m for m in modalities if m not in out]
    if missing:
        raise InputError(f"-i: the bundle's task needs modalities {list(modalities)}; missing {missing}")
    return {m: out[m] for m in modalities}


def case_of(files: Mapping[str, str], modalities: Sequence[str]) -> str:
    """A case id for files given on a command line: their common stem without modality suffixes."""
    import os

    stems = [modality_in_name(p, modalities)[1] for p in files.values()]
    stem = os.path.commonprefix(stems).rstrip(_SEPARATORS) if len(stems) > 1 else stems[0]
    return stem or "case"
