"""Overlap-weighted stitching of window predictions for 2-D slices, 3-D volumes and whole slides."""
from __future__ import annotations

from medseg.stitch.accumulator import StitchAccumulator
from medseg.stitch.geometry import compute_steps, compute_windows
from medseg.stitch.inference import sliding_window_inference
from medseg.stitch.weights import WEIGHT_MODES, compute_weights

__all__ = ["WEIGHT_MODES", "StitchAccumulator", "compute_steps", "compute_weights", "compute_windows",
           "sliding_window_inference"]
