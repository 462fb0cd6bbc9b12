"""Image and file I/O that keeps geometry and never leaves a half-written output.

Images are ``SimpleITK.Image`` objects, so origin, spacing and direction travel with the
voxels. Arrays taken from them are in SimpleITK order ``(z, y, x)``.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)


_UMASK = os.umask(0)
os.umask(_UMASK)


class InputError(ValueError):
    """A user-supplied file or value is unusable; the message says which and what to do."""


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the final suffix (``.nii.gz``, ``.json`` ...) so writers that pick
    the format from the extension still work. On any exception the temporary file is removed,
    so no partial output is ever mistaken for a result.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are for everyone to read
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def read_image(path: str | Path, *, case: str | None = None, pixel_type: int = sitk.sitkFloat32,
               source: bool = False) -> sitk.Image:
    """Read a 3-D image, failing with a message that names the case and file.

    Args:
        path: image file (NIfTI, NRRD, MHA ...).
        case: case id for the error message.
        pixel_type: SimpleITK pixel type to cast to.
        source: the file comes from outside the workflow (a scan as delivered): also check that
            a gzip stream is whole, and the voxels *on disk* for NaN/inf. SimpleITK's NIfTI reader
            (niftilib) silently zero-fills a truncated ``.nii.gz`` and turns NaN into 0, so this
            decompresses the file once more and reads float NIfTI data with nibabel; the
            workflow's own intermediate files do not need it.

    Raises:
        InputError: unreadable/corrupt file, not 3-D, or non-finite voxels.
    """
    where = f"case {case!r}, file {path}" if case else f"file {path}"
    if not Path(path).exists():
        raise InputError(f"{where}: does not exist")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{where}: cannot be read (corrupt or truncated?): {str(e).strip().splitlines()[-1]}") from e
    if img.GetDimension() != 3:
        raise InputError(f"{where}: expected a 3-D image, got {img.GetDimension()}-D with size {img.GetSize()}; "
                         "extract the volume you want before running medseg")
    n_bad = 0
    if source and str(path).endswith(".gz"):
        _check_gzip_stream(path, _payload(img), where)
    if source and str(path).endswith((".nii", ".nii.gz")) and img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        import nibabel as nib

        n_bad = int((~np.isfinite(np.asanyarray(nib.load(str(path)).dataobj))).sum())
    img = sitk.Cast(img, pixel_type)
    if pixel_type in (sitk.sitkFloat32, sitk.sitkFloat64):
        n_bad = n_bad or int((~np.isfinite(sitk.GetArrayViewFromImage(img))).sum())
    if n_bad:
        raise InputError(f"{where}: {n_bad} voxels are NaN or infinite; fix or re-export the scan")
    return img


def _payload(img: sitk.Image) -> int:
    """Bytes of ``img``'s voxels."""
    return img.GetNumberOfPixels() * img.GetNumberOfComponentsPerPixel() * img.GetSizeOfPixelComponent()


def _gunzipped_size(path: str | Path, chunk: int = 1 << 22) -> int:
    """Bytes in gzip file ``path``, read to the end: a truncated stream or a bad CRC raises
    (EOFError, gzip.BadGzipFile, zlib.error)."""
    n = 0
    with gzip.open(path, "rb") as f:
        while block := f.read(chunk):
            n += len(block)
    return n


def _check_gzip_stream(path: str | Path, min_bytes: int, where: str) -> None:
    """Decompress ``path`` to nowhere: raise InputError if the stream is cut short, fails its CRC,
    or holds fewer than ``min_bytes`` (the voxels its header promises)."""
    try:
        total = _gunzipped_size(path)
    except (EOFError, OSError, zlib.error) as e:
        raise InputError(f"{where}: cannot be read (corrupt or truncated gzip data: {e}); copy the file again") from e
    if total < min_bytes:
        raise InputError(f"{where}: holds {total} bytes, fewer than the {min_bytes} bytes of voxels its header "
                         "declares (truncated?); copy the file again")


def read_labels(path: str | Path, *, case: str | None = None) -> sitk.Image:
    """Read a label map as UInt8 (see :func:`read_image` for errors)."""
    img = read_image(path, case=case, pixel_type=sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(img)
    if not np.array_equal(arr, np.round(arr)) or arr.min() < 0 or arr.max() > 255:
        raise InputError(f"case {case!r}, file {path}: label map must hold integers in [0, 255]")
    return sitk.Cast(img, sitk.sitkUInt8)


def write_image(img: sitk.Image, path: str | Path, compress: bool = True, level: int = 1) -> None:
    """Write ``img`` atomically (temp file then rename).

    ``.nii.gz`` is written as a raw ``.nii`` by SimpleITK, checked, and gzipped here by
    :func:`_gzip_members` (ITK's own gzip ignores the level and is ~5x slower: a 240x240x155
    float image takes 2.8 s there, 0.6 s here, for ~20 % more bytes).

    Raises:
        OSError: the file came out incomplete (disk full, quota): SimpleITK does not report
            failed writes itself, so what it wrote is checked before it is used.
    """
    payload = _payload(img)
    with atomic_path(path) as tmp:
        gz = compress and tmp.name.endswith(".gz")
        written = tmp.with_name(tmp.name[:-3]) if gz else tmp  # .nii.gz: a raw .nii first
        try:
            sitk.WriteImage(img, str(written), compress and not gz, level if compress and not gz else -1)
            _check_complete(written, payload, path)
            if gz:
                try:
                    _gzip_members(written, tmp, level)
                except OSError as e:
                    raise OSError(f"writing {path} failed ({e}); disk full?") from e
        finally:
            if gz:
                written.unlink(missing_ok=True)


def _gzip_members(src: Path, dst: Path, level: int, chunk: int = 1 << 22) -> None:
    """Gzip ``src`` into ``dst`` as one gzip member per 4 MB chunk, compressed on up to 4 threads.

    Concatenated members are a valid gzip file (RFC 1952), read as one stream by zlib (ITK,
    FSL), Python's gzip (nibabel) and gunzip. No name or time stamp: equal input, equal bytes.
    """
    def member(data: bytes) -> bytes:
        return gzip.compress(data, level, mtime=0)

    with open(src, "rb") as f, open(dst, "wb") as out, ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        for block in pool.map(member, iter(lambda: f.read(chunk), b"")):
            out.write(block)


def _check_complete(tmp: Path, payload: int, path: str | Path) -> None:
    """Raise OSError unless ``tmp`` holds at least ``payload`` bytes (after gunzip for ``.gz``)."""
    try:
        n = _gunzipped_size(tmp) if str(tmp).endswith(".gz") else Path(tmp).stat().st_size
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise OSError(f"writing {path} failed: the file is incomplete ({e}); disk full?") from e
    if n < payload:
        raise OSError(f"writing {path} failed: {n} of at least {payload} bytes written; disk full?")


def array_to_image(arr: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap a ``(z, y, x)`` array in an image with ``reference``'s geometry."""
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(reference)
    return img


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically, sorted keys, two-space indent."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Save arrays to an uncompressed ``.npz`` atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
