"""Stain normalisation of H&E slides: Macenko and Reinhard, target fitted on training slides.

Estimation is torchstain's (Macenko et al., ISBI 2009: stain vectors from the optical-density
plane of the two main eigenvectors, robust extreme angles, 99th-percentile concentrations;
Reinhard et al., 2001: per-channel mean/std in CIELAB). The *target* is fitted once on tissue
pixels pooled from the training slides and saved as JSON next to the model; each slide to
normalise gets its *source* parameters estimated once from its own tissue pixels (more stable
than per-tile estimates, and tiles with little tissue are handled like the rest). Applying is
then a fixed per-pixel map: Macenko re-mixes the slide's stain concentrations (least squares on
its stain matrix, rescaled to the target's maximal concentrations) with the target's stain
vectors; Reinhard standardises CIELAB channels (scikit-image conversions). Glass (optical
density below ``BETA`` in every channel) is left unchanged by both.

Vahadane is not offered: no maintained library provides it (staintools, last release 2019,
needs spams).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from skimage import color
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

from medseg.io import InputError, atomic_path

log = logging.getLogger(__name__)

METHODS = ("macenko", "reinhard")
IO = 255.0  # transmitted light intensity (torchstain defaults to 240; 255 keeps OD linear in the stains)
BETA = 0.15  # optical density below which a pixel is glass (all channels)
ALPHA = 1.0  # percentile of the robust extreme angles (Macenko)


def stain_params(method: str, pixels: np.ndarray) -> dict:
    """Stain parameters of ``(N, 3)`` uint8 tissue pixels.

    Returns:
        macenko: ``stain_matrix`` (3 x 2, columns H then E, unit OD vectors) and ``max_conc`` (2);
        reinhard: ``lab_mean`` and ``lab_std`` (3 each, CIELAB).

    Raises:
        ValueError: unknown method, or too few tissue pixels to estimate from.
    """
    if method not in METHODS:
        raise ValueError(f"stain method must be one of {list(METHODS)}, got {method!r}")
    pixels = np.asarray(pixels, dtype=np.uint8).reshape(-1, 3)
    tissue = pixels[~is_glass(pixels)]
    if len(tissue) < 100:
        raise ValueError(f"stain estimation needs >= 100 tissue pixels (optical density >= {BETA}), got {len(tissue)}")
    if method == "macenko":
        est = NumpyMacenkoNormalizer()
        est.fit(tissue.reshape(-1, 1, 3), Io=IO, alpha=ALPHA, beta=BETA)
        return {"stain_matrix": np.asarray(est.HERef, dtype=float).tolist(),
                "max_conc": np.asarray(est.maxCRef, dtype=float).tolist()}
    lab = color.rgb2lab(tissue.reshape(-1, 1, 3)).reshape(-1, 3)
    return {"lab_mean": lab.mean(axis=0).tolist(), "lab_std": np.maximum(lab.std(axis=0), 1e-6).tolist()}


def is_glass(pixels: np.ndarray) -> np.ndarray:
    """True where every channel's optical density ``-ln((I + 1) / IO)`` is below ``BETA``.

    (torchstain's estimation drops pixels where *any* channel is below; that also drops pale
    eosin, which must still be normalised.)
    """
    od = -np.log((pixels.astype(np.float32) + 1.0) / IO)
    return (od < BETA).all(axis=-1)


@dataclass(frozen=True)
class StainTarget:
    """A fitted normalisation target (saved as JSON with the model).

    Attributes:
        method: ``macenko`` or ``reinhard``.
        params: see :func:`stain_params`.
        fitted_on: ids of the (training) slides the target was fitted on.
    """

    method: str
    params: dict
    fitted_on: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"stain method must be one of {list(METHODS)}, got {self.method!r}")

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({**asdict(self), "fitted_on": list(self.fitted_on)}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> StainTarget:
        try:
            d = json.loads(Path(path).read_text())
            return cls(d["method"], d["params"], tuple(d.get("fitted_on", ())))
        except (OSError, KeyError, json.JSONDecodeError) as e:
            raise InputError(f"stain target {path} cannot be read (expected JSON with method and params): {e}") from e


def fit_target(method: str, pixel_sets: Iterable[np.ndarray], slide_ids: Sequence[str] = ()) -> StainTarget:
    """Fit a target on tissue pixels pooled from training slides (each ``(N_i, 3)`` uint8)."""
    pixels = np.concatenate([np.asarray(p, dtype=np.uint8).reshape(-1, 3) for p in pixel_sets])
    return StainTarget(method, stain_params(method, pixels), tuple(slide_ids))


class StainNormalizer:
    """Maps one slide's colours to a target: ``normalizer(rgb)`` for ``(..., 3)`` uint8 RGB.

    Args:
        target: the fitted target.
        source: this slide's parameters (:func:`stain_params` of its tissue pixels, same method).
    """

    def __init__(self, target: StainTarget, source: dict) -> None:
        self.target, self.source = target, source
        if target.method == "macenko":
            src = np.asarray(source["stain_matrix"], dtype=np.float64)
            ref = np.asarray(target.params["stain_matrix"], dtype=np.float64)
            scale = np.asarray(target.params["max_conc"]) / np.asarray(source["max_conc"])
            # OD_norm = ref @ diag(scale) @ pinv(src) @ OD: one 3x3 matrix acting on optical density
            self._od_map = (ref * scale[None, :]) @ np.linalg.pinv(src)
        else:
            self._mean_s, self._std_s = np.asarray(source["lab_mean"]), np.asarray(source["lab_std"])
            self._mean_t, self._std_t = (np.asarray(target.params["lab_mean"]), np.asarray(target.params["lab_std"]))

    @classmethod
    def for_pixels(cls, target: StainTarget, pixels: np.ndarray) -> StainNormalizer:
        """Estimate the source parameters from a slide's tissue pixels ``(N, 3)`` uint8."""
        return cls(target, stain_params(target.method, pixels))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Normalised copy of ``(..., 3)`` uint8 RGB (glass unchanged)."""
        shape = rgb.shape
        flat = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        if self.target.method == "macenko":
            od = -np.log((flat.astype(np.float64) + 1.0) / IO)
            out = IO * np.exp(-(od @ self._od_map.T)) - 1.0
        else:
            lab = color.rgb2lab(flat.reshape(-1, 1, 3)).reshape(-1, 3)
            lab = (lab - self._mean_s) / self._std_s * self._std_t + self._mean_t
            out = color.lab2rgb(lab.reshape(-1, 1, 3)).reshape(-1, 3) * 255.0
        out = np.clip(np.round(out), 0, 255).astype(np.uint8)
        glass = is_glass(flat)
        out[glass] = flat[glass]
        return out.reshape(shape)


def load_stain(path: str | Path | None) -> StainTarget | None:
    """The stain target saved at ``path``; None for no file or a ``{"method": "none"}`` file (raw colours)."""
    if path is None:
        return None
    try:
        if json.loads(Path(path).read_text()).get("method") == "none":
            return None
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"stain target {path} cannot be read: {e}") from e
    return StainTarget.load(path)
