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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
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


# Two grids are "the same grid" if they place every voxel centre within this fraction of a voxel
# (of the smaller spacing) of each other. 1 % of a voxel (10 micrometres at 1 mm) changes no
# voxel's neighbourhood and no surface distance that matters, and is well above what NIfTI's
# float32 geometry fields add: an ITK write/read round trip moves the origin by up to 7e-6 mm and
# the direction cosines by 7e-8; a direction taken from the float32 quaternion (qform) instead of
# the sform differs by up to 1.2e-5, 3 micrometres at the edge of a 240 mm field of view
# (measured on 200 random oblique grids). One constant for the case sheet, evaluation and QC.
GRID_TOLERANCE_VOXELS = 0.01
_ORTHONORMAL_ATOL = 1e-4  # |R^T R - I| of a direction matrix; float32 storage gives ~1e-7
_NIFTI = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Grid:
    """An image's voxel grid as SimpleITK reports it (x, y, z order; mm)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, img: sitk.Image | sitk.ImageFileReader | Grid) -> Grid:
        if isinstance(img, Grid):
            return img
        return cls(tuple(img.GetSize()), tuple(img.GetSpacing()), tuple(img.GetOrigin()), tuple(img.GetDirection()))


def grid_differences(a: sitk.Image | Grid, b: sitk.Image | Grid,
                     tolerance_voxels: float = GRID_TOLERANCE_VOXELS) -> list[str]:
    """How grids ``a`` and ``b`` differ: ``[]`` if they are the same grid, else one entry per part.

    Sizes must be equal. Spacing, origin and direction are each judged by how far they move a
    voxel centre (origin: directly; spacing and direction: at the far end of the grid), against
    ``tolerance_voxels`` x the smaller voxel size (see :data:`GRID_TOLERANCE_VOXELS`).

    Returns:
        e.g. ``["origin (mm) (0.0, 0.005, 0.0) vs (0.0, 0.0, 0.0)"]`` (``a`` first).
    """
    a, b = Grid.of(a), Grid.of(b)
    if a.size != b.size:
        return [f"size {a.size} vs {b.size}"]
    n = len(a.size)
    sa, sb = np.asarray(a.spacing, float), np.asarray(b.spacing, float)
    da, db = np.asarray(a.direction, float).reshape(n, n), np.asarray(b.direction, float).reshape(n, n)
    extent = np.asarray(a.size, float) - 1
    tol = tolerance_voxels * float(min(sa.min(), sb.min()))
    moved = {
        "spacing (mm)": np.max(np.abs(sa - sb) * extent),
        "origin (mm)": np.max(np.abs(np.subtract(a.origin, b.origin))),
        "direction": np.max(np.linalg.norm(da - db, axis=0) * sb * extent),
    }
    values = {"spacing (mm)": (a.spacing, b.spacing), "origin (mm)": (a.origin, b.origin),
              "direction": (a.direction, b.direction)}
    return [f"{name} {_rounded(values[name][0])} vs {_rounded(values[name][1])}" for name, d in moved.items()
            if not d <= tol]  # "not <=": NaN counts as different


def _rounded(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(float(x), 6) for x in values)


def _where(path: str | Path, case: str | None) -> str:
    return f"case {case!r}, file {path}" if case else f"file {path}"


def _is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(_NIFTI)


@contextlib.contextmanager
def exact_path(path: str | Path) -> Iterator[str]:
    """A name under which SimpleITK reads exactly the file ``path`` (for ITK readers).

    ITK's NIfTI library, given ``X.nii.gz``, reads the header from it but the voxels from an
    ``X.nii`` beside it when there is one (a stale uncompressed export then silently wins). For
    such a file this yields a private link to it in an empty folder; otherwise ``path`` itself.
    """
    p = str(path)
    if not _stale_sibling(p):
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="medseg-read-") as folder:
        link = os.path.join(folder, "image" + p[-7:])
        os.symlink(os.path.abspath(p), link)
        yield link


def _stale_sibling(path: str) -> bool:
    return path.lower().endswith(".nii.gz") and os.path.exists(path[:-3])


def check_header(path: str | Path, case: str | None = None) -> Grid:
    """Check a file's header without reading its voxels; return its grid.

    Checks: the file exists; a ``.gz`` file starts with the gzip magic bytes; the image is 3-D;
    every voxel size is finite and > 0 (for NIfTI read from the header itself: SimpleITK turns
    a ``pixdim`` of 0 or NaN into 1 mm); origin finite; the direction (NIfTI: the affine) is
    orthonormal, not sheared.

    Raises:
        InputError: naming the case, the file and the failed check.
    """
    import SimpleITK as sitk

    where = _where(path, case)
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{where}: does not exist" if not p.exists() else f"{where}: is not a file")
    if p.name.lower().endswith(".gz"):
        with open(p, "rb") as f:
            head = f.read(548)
        if head[:2] != b"\x1f\x8b":
            if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00":  # an uncompressed NIfTI-1/-2
                raise InputError(f"{where}: not gzip-compressed although named {''.join(p.suffixes[-2:])}; rename it to "
                                 f"{p.name[:-3]}")
            raise InputError(f"{where}: cannot be read (corrupt or truncated?): not gzip data although named .gz")
    if _stale_sibling(str(p)):
        log.warning("%s: %s beside it is another file; it is not read", where, p.name[:-3])
    if _is_nifti(p):
        _check_nifti_header(p, where)
    reader = sitk.ImageFileReader()
    try:
        with exact_path(p) as exact:
            reader.SetFileName(exact)
            reader.ReadImageInformation()
    except RuntimeError as e:
        raise _read_error(e, where) from e
    grid = Grid.of(reader)
    _check_grid(grid, where)
    return grid


def _check_nifti_header(path: Path, where: str) -> None:
    """Dimensions, voxel sizes and affine from the NIfTI header (nibabel reads only the header)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises many types for a bad header (ImageFileError, ValueError, EOFError ...)
        raise InputError(f"{where}: cannot be read as NIfTI (corrupt or truncated header?): {e}") from e
    shape = tuple(int(n) for n in img.shape)
    shape = shape[:4] if len(shape) > 4 else shape  # NIfTI dim 5: vector components (a displacement field)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputError(f"{where}: expected a 3-D image, got {len(shape)}-D with size {shape}; "
                         "extract the volume you want before running medseg")
    with nib.openers.ImageOpener(str(path)) as f:  # the header as stored: nib.load sets a pixdim of 0 to 1
        raw = type(img.header).from_fileobj(f, check=False)
    pixdim = np.asarray(raw["pixdim"][1:4], float)
    if not (np.all(np.isfinite(pixdim)) and np.all(pixdim != 0)):  # negative: niftilib takes |pixdim|
        raise InputError(f"{where}: voxel size (NIfTI pixdim) is {pixdim.tolist()} mm: every voxel size must be finite "
                         "and > 0 (SimpleITK would silently read it as 1 mm); fix the header")
    affine = np.asarray(img.affine, float)  # sform if set, else qform, else pixdim
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{where}: the affine (NIfTI sform/qform) holds NaN or infinite values; fix the header")
    cols = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(cols > 0):
        raise InputError(f"{where}: the affine (NIfTI sform/qform) has a zero voxel size {cols.tolist()}; fix the header")
    rot = affine[:3, :3] / cols
    err = float(np.abs(rot.T @ rot - np.eye(3)).max())
    if err > _ORTHONORMAL_ATOL:
        raise InputError(f"{where}: the affine is sheared (its axes are not orthonormal: |R^T R - I| = {err:.3g}); "
                         "ITK images need an orthonormal direction: resample the image onto an unsheared grid")


def _check_grid(grid: Grid, where: str) -> None:
    n = len(grid.size)
    if n != 3:
        raise InputError(f"{where}: expected a 3-D image, got {n}-D with size {grid.size}; "
                         "extract the volume you want before running medseg")
    sp = np.asarray(grid.spacing, float)
    if not (np.all(np.isfinite(sp)) and np.all(sp > 0)):
        raise InputError(f"{where}: voxel size {tuple(sp.tolist())} mm: every voxel size must be finite and > 0; fix the header")
    if not np.all(np.isfinite(grid.origin)):
        raise InputError(f"{where}: origin {grid.origin} is not finite; fix the header")
    d = np.asarray(grid.direction, float).reshape(n, n)
    if not np.all(np.isfinite(d)) or np.abs(d.T @ d - np.eye(n)).max() > _ORTHONORMAL_ATOL:
        raise InputError(f"{where}: the direction matrix {grid.direction} is sheared / not orthonormal; "
                         "resample the image onto an unsheared grid")


def _read_error(e: RuntimeError, where: str) -> InputError:
    last = str(e).strip().splitlines()[-1]
    if "orthonormal" in str(e):
        return InputError(f"{where}: the affine is sheared / not orthonormal ({last}); resample the image onto an "
                          "unsheared grid")
    return InputError(f"{where}: cannot be read (corrupt or truncated?): {last}")


def _read_checked(path: str | Path, case: str | None, full: bool) -> sitk.Image:
    """:func:`check_header`, then read the voxels in their own pixel type; with ``full`` also check
    that a gzip stream is whole and (NIfTI) the voxels on disk are finite (see :func:`read_image`)."""
    import SimpleITK as sitk

    where = _where(path, case)
    check_header(path, case)
    try:
        with exact_path(path) as exact:
            img = sitk.ReadImage(exact)
    except RuntimeError as e:
        raise _read_error(e, where) from e
    _check_grid(Grid.of(img), where)
    n_bad = 0
    if full and str(path).lower().endswith(".gz"):
        _check_gzip_stream(path, _payload(img), where)
    if full and _is_nifti(path) and img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        import nibabel as nib

        n_bad = int((~np.isfinite(np.asanyarray(nib.load(str(path)).dataobj))).sum())
    if img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        n_bad = n_bad or int((~np.isfinite(sitk.GetArrayViewFromImage(img))).sum())
    if n_bad:
        raise InputError(f"{where}: {n_bad} voxels are NaN or infinite; fix or re-export the {'scan' if full else 'file'}")
    return img


def read_image(path: str | Path, *, case: str | None = None, pixel_type: int | None = None,
               source: bool = False) -> sitk.Image:
    """Read a 3-D image, failing with a message that names the case, the file and the check.

    Args:
        path: image file (NIfTI, NRRD, MHA ...).
        case: case id for the error message.
        pixel_type: SimpleITK pixel type to cast to (default ``sitk.sitkFloat32``).
        source: the file comes from outside the workflow (a scan as delivered): also check that
            a gzip stream is whole, the voxels *on disk* for NaN/inf, and that the scan is not
            blank (every voxel the same value). SimpleITK's NIfTI reader (niftilib) silently
            zero-fills a truncated ``.nii.gz`` and turns NaN into 0, so this decompresses the
            file once more and reads float NIfTI data with nibabel; the workflow's own
            intermediate files do not need it.

    Raises:
        InputError: see :func:`check_header`; unreadable, truncated or not gzip-compressed file,
            non-finite voxels, and (``source``) a blank or constant scan.
    """
    import SimpleITK as sitk

    img = _read_checked(path, case, full=source)
    was_float64 = img.GetPixelID() == sitk.sitkFloat64
    pixel_type = sitk.sitkFloat32 if pixel_type is None else pixel_type
    img = sitk.Cast(img, pixel_type) if img.GetPixelID() != pixel_type else img
    if was_float64 and pixel_type == sitk.sitkFloat32:
        n_bad = int((~np.isfinite(sitk.GetArrayViewFromImage(img))).sum())  # beyond float32's range
        if n_bad:
            raise InputError(f"{_where(path, case)}: {n_bad} voxels are NaN or infinite after conversion to float32; "
                             "fix or re-export the scan")
    if source and img.GetNumberOfComponentsPerPixel() == 1:
        arr = sitk.GetArrayViewFromImage(img)
        lo, hi = float(arr.min()), float(arr.max())
        if lo == hi:
            raise InputError(f"{_where(path, case)}: every voxel is {lo:g}: a blank scan; fix or re-export it, or leave "
                             "the case out with datasets.<name>.exclude")
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
    """Read a label map as UInt8, always whole and with every check of a source scan.

    Label maps are small, so the gzip stream is always checked to its end (a truncated
    reference would otherwise be zero-filled and scored). The values must be integers in
    [0, 255] in the file's own pixel type: a float map holding 0.9999 is an error, never
    truncated or rounded.

    Raises:
        InputError: see :func:`check_header` and :func:`read_image`; non-integer, negative or
            > 255 values (with examples).
    """
    import SimpleITK as sitk

    where = _where(path, case)
    img = _read_checked(path, case, full=True)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{where}: a label map must have one value per voxel, got "
                         f"{img.GetNumberOfComponentsPerPixel()} components")
    arr = sitk.GetArrayViewFromImage(img)
    if arr.dtype.kind == "f":
        frac = arr[arr != np.round(arr)]
        if frac.size:
            examples = ", ".join(f"{v:.6g}" for v in np.unique(frac)[:5])
            raise InputError(f"{where}: label map holds {frac.size} non-integer values (e.g. {examples}); labels must "
                             "be whole numbers: re-export it as an integer image (do not resample labels with "
                             "linear interpolation)")
    lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
    if lo < 0 or hi > 255:
        raise InputError(f"{where}: label map values must be integers in [0, 255], got {lo:g}..{hi:g}")
    return sitk.Cast(img, sitk.sitkUInt8) if img.GetPixelID() != sitk.sitkUInt8 else img


def write_image(img: sitk.Image, path: str | Path, compress: bool = True, level: int = 1) -> None:
    """Write ``img`` atomically (temp file then rename).

    ``.nii.gz`` is written as a raw ``.nii`` by SimpleITK, checked, and gzipped here by
    :func:`_gzip_members` (ITK's own gzip ignores the level and is ~5x slower: a 240x240x155
    float image takes 2.8 s there, 0.6 s here, for ~20 % more bytes).

    Raises:
        OSError: the file came out incomplete (disk full, quota): SimpleITK does not report
            failed writes itself, so what it wrote is checked before it is used.
    """
    import SimpleITK as sitk

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
    import SimpleITK as sitk

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


T = TypeVar("T")
R = TypeVar("R")


def thread_map(fn: Callable[[T], R], items: Iterable[T], threads: int, desc: str, unit: str) -> list[R]:
    """``[fn(x) for x in items]`` with ``threads`` workers, in order, with a progress bar (reading many
    files at a time: I/O, decompression and ITK release the GIL)."""
    from tqdm import tqdm

    items = list(items)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, unit=unit, mininterval=5))
