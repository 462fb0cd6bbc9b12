"""Whole-slide images: reading at a resolution, tissue detection, out-of-core stitched prediction."""
from __future__ import annotations
