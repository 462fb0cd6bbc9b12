"""How windows are blended and accumulated: the stitching settings shared by every stitching entry point.

:class:`StitchSettings` is what :func:`medseg.stitch.inference.sliding_window_inference` and
:class:`medseg.stitch.accumulator.StitchAccumulator` take (each also accepts its fields as keyword
arguments); it is checked once, when it is built.
"""
from __future__ import annotations

from dataclasses import dataclass

from medseg.stitch.geometry import check_batch_size, check_overlap
from medseg.stitch.weights import check_mode

BACKENDS = ("auto", "memory", "zarr")
DEFAULT_MEMORY_LIMIT = 4 * 1024**3  # bytes of accumulated output above which "auto" goes to disk


@dataclass(frozen=True)
class StitchSettings:
    """Window overlap, blending and accumulation of a stitched prediction.

    Attributes:
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        mode: blending weights: ``gaussian``, ``constant``, ``pyramid`` or ``cosine``
            (:data:`medseg.stitch.weights.WEIGHT_MODES`).
        sigma_scale: Gaussian sigma as a fraction of the patch size, > 0.
        batch_size: windows per predictor call.
        tta: average over mirrorings of all spatial axes (``2**ndim`` predictor calls per batch).
        backend: ``memory`` (torch tensor), ``zarr`` (weighted sums in a chunked array on disk) or
            ``auto`` (zarr when the output exceeds ``memory_limit_bytes``).
        memory_limit_bytes: output size in bytes above which ``backend="auto"`` accumulates on disk.
        margin: voxels (int or one per axis) at each window side given weight 0 unless that side
            lies on the image border; set it to the network's receptive-field radius to reproduce
            an untiled forward pass exactly (needs ``overlap * patch >= 2 * margin``).
        chunks: spatial zarr chunk shape in voxels (default about 1 M voxels).
        allow_uncovered: fill voxels that no window covered with 0 instead of raising (whole-slide
            images where background windows are skipped).
    """

    overlap: float = 0.5
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    batch_size: int = 4
    tta: bool = False
    backend: str = "auto"
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT
    margin: int | tuple[int, ...] = 0
    chunks: tuple[int, ...] | None = None
    allow_uncovered: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "overlap", check_overlap(self.overlap))
        check_mode(self.mode)
        check_batch_size(self.batch_size)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.memory_limit_bytes < 0:
            raise ValueError(f"memory_limit_bytes must be >= 0, got {self.memory_limit_bytes}")
        margins = (self.margin,) if isinstance(self.margin, int) else tuple(self.margin)
        if any(m < 0 for m in margins):
            raise ValueError(f"margin must be >= 0, one value or one per axis, got {self.margin}")
        if not self.sigma_scale > 0:
            raise ValueError(f"sigma_scale must be > 0, got {self.sigma_scale}")
        object.__setattr__(self, "sigma_scale", float(self.sigma_scale))
