"""Intensity normalisation: Nyul-Udupa histogram standardisation, then z-score inside the brain.

Landmarks are fitted on the training cases of one fold only (no leakage) and stored as JSON:
``{"percentiles": [...], "modalities": {mod: {"standard": [...]}}}``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from medseg.preprocess.config import NormConfig

log = logging.getLogger(__name__)

def landmarks(values: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    return np.percentile(values, percentiles)


def fit_nyul(samples: Sequence[np.ndarray], cfg: NormConfig = NormConfig()) -> list[float]:
    """Standard-scale landmarks from brain intensities of the training images of one modality."""
    return standard_scale([landmarks(v, cfg.percentiles) for v in samples], cfg)


def standard_scale(case_landmarks: Sequence[Sequence[float]], cfg: NormConfig = NormConfig()) -> list[float]:
    """Nyul standard scale from each training image's landmarks (Nyul & Udupa 1999).

    Each image's landmarks are mapped linearly so its first/last landmark hit ``cfg.scale``;
    the standard landmarks are their mean.
    """
    if not case_landmarks:
        raise ValueError("the Nyul standard scale needs at least one training image")
    lo, hi = cfg.scale
    mapped = []
    for lm in case_landmarks:
        lm = np.asarray(lm, dtype=float)
        span = max(lm[-1] - lm[0], 1e-6)
        mapped.append(lo + (lm - lm[0]) / span * (hi - lo))
    std = np.mean(mapped, axis=0)
    return np.maximum.accumulate(std).tolist()


def apply_nyul(image: np.ndarray, brain: np.ndarray, standard: Sequence[float], cfg: NormConfig = NormConfig()) -> np.ndarray:
    """Piecewise-linear map of ``image`` so its brain landmarks land on ``standard`` (extrapolating)."""
    lm = landmarks(image[brain], cfg.percentiles)
    lm = lm + np.arange(len(lm)) * 1e-6 * max(abs(lm[-1] - lm[0]), 1.0)  # strictly increasing
    std = np.asarray(standard, dtype=float)
    out = np.interp(image, lm, std)
    lo_slope = (std[1] - std[0]) / (lm[1] - lm[0])
    hi_slope = (std[-1] - std[-2]) / (lm[-1] - lm[-2])
    out = np.where(image < lm[0], std[0] + (image - lm[0]) * lo_slope, out)
    out = np.where(image > lm[-1], std[-1] + (image - lm[-1]) * hi_slope, out)
    return out.astype(np.float32)


def zscore(image: np.ndarray, brain: np.ndarray, clip: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Clip to brain percentiles, then zero mean / unit std inside ``brain``; 0 outside."""
    vals = image[brain]
    lo, hi = np.percentile(vals, clip)
    img = np.clip(image, lo, hi)
    vals = img[brain]
    out = (img - vals.mean()) / max(float(vals.std()), 1e-6)
    out[~brain] = 0.0
    return out.astype(np.float32)


def normalize(images: dict[str, np.ndarray], brain: np.ndarray, model: dict | None, cfg: NormConfig = NormConfig()) -> dict[str, np.ndarray]:
    """Normalise each modality of one case with the fitted ``model`` (see :func:`fit_model`)."""
    if not brain.any():
        raise ValueError("brain mask is empty: cannot normalise (check the skull-stripping output)")
    out = {}
    for mod, img in images.items():
        method = cfg.method_for(mod)
        if method == "none":
            out[mod] = img.astype(np.float32)
            continue
        if method == "nyul":
            if model is None or mod not in model.get("modalities", {}):
                raise ValueError(f"no Nyul landmarks for modality {mod!r}: fit the normaliser on the training cases first")
            img = apply_nyul(img, brain, model["modalities"][mod]["standard"], cfg)
        out[mod] = zscore(img, brain, cfg.clip)
    return out


QUANTILE_GRID = tuple(np.round(np.arange(0, 100.25, 0.5), 1).tolist())  # 0, 0.5, ..., 100


def brain_quantiles(images: dict[str, np.ndarray], brain: np.ndarray) -> dict:
    """One case's intensity quantiles inside ``brain`` on :data:`QUANTILE_GRID`, every modality.

    What fitting a fold's normaliser needs from a training case (a few hundred numbers), and
    independent of the normalisation settings: landmarks at any percentiles are read off it
    (:func:`landmarks_from_quantiles`; exact for percentiles on the 0.5 grid).
    """
    if not brain.any():
        raise ValueError("brain mask is empty: cannot compute intensity quantiles (check the skull-stripping output)")
    return {"percentiles": list(QUANTILE_GRID),
            "modalities": {m: np.percentile(img[brain], QUANTILE_GRID).tolist() for m, img in images.items()}}


def landmarks_from_quantiles(quantiles: dict, modality: str, percentiles: Sequence[float]) -> np.ndarray:
    """Landmarks of ``modality`` at ``percentiles``, interpolated on the case's quantile grid."""
    if modality not in quantiles["modalities"]:
        raise ValueError(f"no intensity quantiles for modality {modality!r}")
    return np.interp(percentiles, quantiles["percentiles"], quantiles["modalities"][modality])


def fit_model_from_quantiles(cases: Sequence[dict], cfg: NormConfig = NormConfig(),
                             modalities: Sequence[str] | None = None) -> dict:
    """The fold's normaliser from its training cases' :func:`brain_quantiles`."""
    mods = list(modalities if modalities is not None else (cases[0]["modalities"] if cases else []))
    nyul = [m for m in mods if cfg.method_for(m) == "nyul"]
    return {"percentiles": list(cfg.percentiles), "scale": list(cfg.scale), "n_cases": len(cases),
            "modalities": {m: {"standard": standard_scale([landmarks_from_quantiles(q, m, cfg.percentiles)
                                                           for q in cases], cfg)} for m in nyul}}


def fit_model(cases: Sequence[tuple[dict[str, np.ndarray], np.ndarray]], cfg: NormConfig = NormConfig()) -> dict:
    """Fit Nyul landmarks for every modality from ``(images, brain mask)`` of training cases."""
    return fit_model_from_quantiles([brain_quantiles(imgs, brain) for imgs, brain in cases], cfg)
