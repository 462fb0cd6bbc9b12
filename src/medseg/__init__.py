"""medseg: a reproducible segmentation workflow for brain-tumour MRI and whole-slide images.

Every workflow stage is a function in a small module of this package; the Snakemake scripts
and the ``medseg`` CLI only parse arguments and call them.
"""
from __future__ import annotations

__version__ = "0.1.0"
