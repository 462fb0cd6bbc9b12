"""Reading a case's source scans as delivered: 3-D files, or one channel of a 4-D (Decathlon) file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.io import InputError, read_image


def header(path: str | Path, case: str, channel: int | None = None) -> tuple[tuple[int, ...], tuple[float, ...],
                                                                             tuple[float, ...], tuple[float, ...]]:
    """(size, spacing, origin, direction) of the 3-D volume (channel ``channel`` of a 4-D file) from the header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"case {case!r}, file {path}: cannot be read (corrupt, truncated or not an image?)") from e
    dim, size = reader.GetDimension(), reader.GetSize()
    if channel is not None and dim == 4:
        if not 0 <= channel < size[3]:
            raise InputError(f"case {case!r}, file {path}: has {size[3]} channels, channel {channel} was expected")
        d = np.array(reader.GetDirection()).reshape(4, 4)[:3, :3]
        return size[:3], reader.GetSpacing()[:3], reader.GetOrigin()[:3], tuple(d.ravel())
    if dim != 3 or (channel not in (None, 0) and dim == 3):
        raise InputError(f"case {case!r}, file {path}: is {dim}-D with size {size}, expected 3-D"
                         + (f" (or 4-D with channel {channel})" if channel is not None else "")
                         + "; extract the volume you want before running medseg")
    return size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def read_source(path: str | Path, case: str, channel: int | None = None, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """A source scan, fully checked (:func:`medseg.io.read_image` with ``source=True``); for a 4-D file the
    3-D volume of ``channel`` with the file's spatial geometry."""
    if channel is None:
        return read_image(path, case=case, pixel_type=pixel_type, source=True)
    size, spacing, origin, direction = header(path, case, channel)
    img = sitk.ReadImage(str(path))
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
    out.SetSpacing(spacing)
    out.SetOrigin(origin)
    out.SetDirection(direction)
    return sitk.Cast(out, pixel_type)
