"""Inference: volume and case prediction, back to native space, model bundles, `medseg predict`."""
