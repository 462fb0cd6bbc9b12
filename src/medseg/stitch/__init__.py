"""Overlap-weighted stitching of window predictions for 2-D slices, 3-D volumes and whole slides.

``geometry`` (window positions) and ``weights`` (blending maps) are pure numpy functions of
shapes; ``accumulator`` sums weighted windows (in memory or on disk); ``inference`` runs a
predictor window by window over a tensor; ``settings`` holds the :class:`StitchSettings` (overlap,
blending, batch size, backend, margin) both of them take.
"""
