"""The ``medseg stitch-slide`` command: predict a whole-slide image and write zarr + pyramidal TIFF.

``--predictor`` is ``identity`` (the slide's grey level, for checking seams) or a model file,
TorchScript (``torch.jit.save``) or exported program (``.pt2``, ``torch.export.save``), mapping
``(B, 3, H, W)`` RGB in [0, 1] to logits ``(B, K, H, W)``; medseg training checkpoints are not
accepted yet (export them first).
"""
from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``stitch-slide`` subcommand."""
    p = subparsers.add_parser("stitch-slide", help="stitched prediction over a whole-slide image",
                              description=__doc__.splitlines()[0])
    p.add_argument("slide", help="SVS / pyramidal TIFF")
    p.add_argument("--out", required=True, help="output folder (probabilities.zarr, probabilities.ome.tif)")
    p.add_argument("--predictor", required=True, help="'identity', or a TorchScript (.pt) / torch.export (.pt2) model file")
    p.add_argument("--tile", type=int, default=512, help="window side in pixels of the processed level")
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction in [0, 1)")
    p.add_argument("--mode", default="gaussian", help="blending: gaussian, constant, pyramid, cosine")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--level", type=int, default=None, help="pyramid level to process (default 0)")
    res.add_argument("--mpp", type=float, default=None, help="microns per pixel to process at (nearest level)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per predictor call")
    p.add_argument("--activation", default="auto", help="for model files: auto, softmax, sigmoid, none")
    p.add_argument("--device", default=None, help="torch device for the predictor (default cpu)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=run_stitch_slide)


def run_stitch_slide(args: argparse.Namespace) -> int:
    from medseg.wsi.predictors import load_predictor
    from medseg.wsi.stitch_slide import SlideStitchConfig, stitch_slide

    config = SlideStitchConfig(tile=args.tile, overlap=args.overlap, mode=args.mode, batch_size=args.batch_size,
                               level=args.level, mpp=args.mpp, device=args.device)
    predictor = load_predictor(args.predictor, args.device or "cpu", args.activation)
    summary = stitch_slide(args.slide, args.out, predictor, config, progress=args.progress)
    log.info("stitched %s", json.dumps(summary))
    return 0
