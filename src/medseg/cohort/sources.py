"""Reading a case's source scans as delivered: 3-D files, or one channel of a 4-D (Decathlon) file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.io import Grid, InputError, check_header, read_image


def header(path: str | Path, case: str, channel: int | None = None) -> Grid:
    """The grid of a 3-D file (every header check of :func:`medseg.io.check_header`), or of
    channel ``channel`` of a 4-D (Decathlon) file, from the header alone."""
    if channel is None:
        return check_header(path, case)
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
        return Grid(tuple(size[:3]), tuple(reader.GetSpacing()[:3]), tuple(reader.GetOrigin()[:3]), tuple(d.ravel()))
    if dim != 3 or channel != 0:
        raise InputError(f"case {case!r}, file {path}: is {dim}-D with size {size}, expected 4-D with channel "
                         f"{channel} (or a 3-D file for a single-modality dataset)")
    return check_header(path, case)


def read_source(path: str | Path, case: str, channel: int | None = None, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """A source scan, fully checked (:func:`medseg.io.read_image` with ``source=True``); for a 4-D file the
    3-D volume of ``channel`` with the file's spatial geometry."""
    if channel is None:
        return read_image(path, case=case, pixel_type=pixel_type, source=True)
    grid = header(path, case, channel)
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
    out.SetSpacing(grid.spacing)
    out.SetOrigin(grid.origin)
    out.SetDirection(grid.direction)
    return sitk.Cast(out, pixel_type)
