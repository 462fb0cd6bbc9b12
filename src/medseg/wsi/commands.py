"""Slide commands: ``stitch-slide`` (predict a whole slide) and the ``slides-*`` steps of the slide branch.

``stitch-slide --predictor`` takes ``identity`` (the slide's grey level, for checking seams), a
medseg training checkpoint (``model.pt``: activation from its task), or a TorchScript
(``torch.jit.save``) / exported program (``.pt2``) mapping ``(B, 3, H, W)`` RGB in [0, 1] to
logits ``(B, K, H, W)``. The slide steps: ``slides-demo`` (embedded demo dataset),
``slides-sheet`` (case sheet with splits by slide), ``slides-stain`` (fit the stain target on
training slides), ``slides-tiles`` (tiles of one slide), ``slides-evaluate`` (one slide's metrics
and thumbnail).

As every medseg command: inputs are ``-i/--input``, outputs ``-o/--output`` (the positional inputs
and ``--out`` of earlier versions still work, hidden); defaults are the slide plan's
(:class:`medseg.plan.resolved.SlideRecipe`: its ``tiles``, ``predict``, ``evaluation`` and ``split``,
and :class:`medseg.wsi.demo.DemoConfig`), so a step run by hand does what the workflow's rule does.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``stitch-slide`` and the ``slides-*`` subcommands (defaults: the slide plan's,
    :class:`medseg.plan.resolved.SlideRecipe` and the dataclasses it is built from)."""
    from medseg.plan.resolved import SlideRecipe

    recipe = SlideRecipe()
    _register_stitch_slide(subparsers, recipe)
    _register_demo(subparsers)
    _register_sheet(subparsers, recipe)
    _register_stain(subparsers, recipe)
    _register_tiles(subparsers, recipe)
    _register_evaluate(subparsers, recipe)


def _register_stitch_slide(subparsers: argparse._SubParsersAction, recipe) -> None:
    """``stitch-slide``: stitched prediction over a whole-slide image."""
    from medseg.cli import add_input, add_output

    p = subparsers.add_parser("stitch-slide", help="stitched prediction over a whole-slide image",
                              description=__doc__.splitlines()[0])
    add_input(p, "SVS / pyramidal TIFF", legacy_positional="slide")
    add_output(p, "output folder (probabilities.zarr, probabilities.ome.tif, predictions.geojson)", "--out")
    p.add_argument("--predictor", required=True, help="'identity', a medseg model.pt, or a TorchScript (.pt) / "
                                                      "torch.export (.pt2) model file")
    predict = recipe.predict  # the workflow's slide prediction settings
    p.add_argument("--tile", type=int, default=predict.tile, help="window side in pixels of the processed level")
    p.add_argument("--overlap", type=float, default=predict.overlap, help="window overlap fraction in [0, 1)")
    p.add_argument("--mode", default=predict.mode, help="blending: gaussian, constant, pyramid, cosine")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--level", type=int, default=None, help="pyramid level to process (default 0)")
    res.add_argument("--mpp", type=float, default=None, help="microns per pixel to process at (nearest level)")
    p.add_argument("--slide-mpp", type=float, default=recipe.mpp, help="level-0 mpp for slides without the metadata")
    p.add_argument("--batch-size", type=int, default=predict.batch_size, help="windows per predictor call")
    p.add_argument("--activation", default="auto", help="auto (checkpoints: from the task), softmax, sigmoid, none")
    p.add_argument("--stain", default="auto", help="stain target JSON; 'auto': stain.json beside a model.pt if "
                                                    "present; 'none': raw colours")
    p.add_argument("--classes", nargs="+", default=None, help="class names for predictions.geojson and the TIFF's "
                                                             "channels (default: the checkpoint's task; none: no GeoJSON)")
    p.add_argument("--device", default=predict.device,
                   help="torch device: auto (CUDA when present, as the workflow), cpu or cuda")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=run_stitch_slide)


def _register_demo(subparsers: argparse._SubParsersAction) -> None:
    """``slides-demo``: the embedded demo slide dataset."""
    from medseg.cli import add_output
    from medseg.wsi.demo import DEMO_CMU, DemoConfig

    demo = DemoConfig()
    p = subparsers.add_parser("slides-demo", help="write the embedded demo slide dataset")
    add_output(p, "output folder (slides/, annotations/, masks/, demo.json)", "--out")
    p.add_argument("--cmu", default=DEMO_CMU, help="cmu_small_region.svs, 'auto' (data/slides/ as "
                                                   "scripts/fetch_demo_slide.sh puts it, else scikit-image textures) "
                                                   "or 'none' (scikit-image textures)")
    p.add_argument("--n-slides", type=int, default=demo.n_slides, help="number of slides")
    p.add_argument("--size", type=int, default=demo.size, help="level-0 side in pixels")
    p.add_argument("--seed", type=int, default=demo.seed, help="generator seed")
    p.set_defaults(func=run_demo)


def _register_sheet(subparsers: argparse._SubParsersAction, recipe) -> None:
    """``slides-sheet``: the slide case sheet with splits by slide."""
    from medseg.cli import add_input, add_output

    p = subparsers.add_parser("slides-sheet", help="slide case sheet (TSV) with splits by slide")
    add_input(p, "folder of slides", legacy_positional="slides")
    p.add_argument("--annotations", required=True, help="folder of <slide id>.geojson")
    p.add_argument("--classes", nargs="+", required=True, help="class names of the annotations, in channel order")
    add_output(p, "slides.tsv", "--out")
    split = recipe.split
    p.add_argument("--test-fraction", type=float, default=split.test_fraction, help="share of slides held out for testing")
    p.add_argument("--val-fraction", type=float, default=split.val_fraction, help="share of training slides validating")
    p.add_argument("--seed", type=int, default=split.seed, help="split seed")
    p.add_argument("--slide-mpp", type=float, default=recipe.mpp, help="level-0 mpp for slides without the metadata")
    p.set_defaults(func=run_sheet)


def _register_stain(subparsers: argparse._SubParsersAction, recipe) -> None:
    """``slides-stain``: the stain target of the sheet's training slides."""
    from medseg.cli import add_input, add_output

    p = subparsers.add_parser("slides-stain", help="fit the stain target on the sheet's training slides")
    add_input(p, "slides.tsv (from slides-sheet)", legacy_positional="sheet")
    p.add_argument("--method", default=recipe.stain, help="macenko or reinhard")
    p.add_argument("--mpp", type=float, default=recipe.tiles.mpp,
                   help="microns per pixel the stains are estimated at (the tiles')")
    add_output(p, "stain.json", "--out")
    p.set_defaults(func=run_stain)


def _register_tiles(subparsers: argparse._SubParsersAction, recipe) -> None:
    """``slides-tiles``: class-aware training tiles of one slide."""
    from medseg.cli import add_input, add_output

    p = subparsers.add_parser("slides-tiles", help="class-aware training tiles of one slide")
    add_input(p, "SVS / pyramidal TIFF", legacy_positional="slide")
    p.add_argument("--annotation", required=True, help="QuPath GeoJSON of the slide")
    p.add_argument("--classes", nargs="+", required=True, help="class names, in channel order")
    add_output(p, "output prefix <dir>/<id> (.npy, .json: the trainer's tile format)", "--out")
    tiles = recipe.tiles
    p.add_argument("--stain", default=None, help="stain target JSON (none: raw colours)")
    p.add_argument("--mpp", type=float, default=tiles.mpp, help="microns per pixel of the tiles")
    p.add_argument("--tile", type=int, default=tiles.tile, help="tile side in pixels")
    p.add_argument("--per-class", type=int, default=tiles.per_class, help="tiles centred on each class")
    p.add_argument("--seed", type=int, default=tiles.seed, help="sampling seed")
    p.add_argument("--slide-mpp", type=float, default=recipe.mpp, help="level-0 mpp for slides without the metadata")
    p.set_defaults(func=run_tiles)


def _register_evaluate(subparsers: argparse._SubParsersAction, recipe) -> None:
    """``slides-evaluate``: per-class metrics and outline thumbnail of one slide."""
    from medseg.cli import add_input, add_output

    p = subparsers.add_parser("slides-evaluate", help="per-class metrics and outline thumbnail of one slide")
    add_input(p, "stitch-slide output folder (probabilities.zarr)", legacy_positional="prediction")
    p.add_argument("--slide", required=True, help="SVS / pyramidal TIFF")
    p.add_argument("--annotation", required=True, help="reference QuPath GeoJSON")
    p.add_argument("--classes", nargs="+", required=True, help="class names, in channel order")
    ev = recipe.evaluation
    p.add_argument("--mpp", type=_mpp, default=ev.mpp, help="evaluation microns per pixel (nearest level of the map; "
                                                            "'none': its finest level, for slides without an mpp)")
    p.add_argument("--min-object-px", type=int, default=ev.min_object_px, help="smallest object counted (pixels)")
    p.add_argument("--object-iou", type=float, default=ev.object_iou, help="IoU at which an object is detected")
    p.add_argument("--kind", default="labels", help="labels (softmax) or regions (sigmoid)")
    add_output(p, "result JSON", "--out")
    p.add_argument("--png", default=None, help="thumbnail with outlines")
    p.set_defaults(func=run_evaluate)


def _mpp(text: str) -> float | None:
    """``--mpp`` of slides-evaluate: a number, or ``none``."""
    return None if text.lower() == "none" else float(text)


def run_stitch_slide(args: argparse.Namespace) -> int:
    from medseg.wsi.predictors import is_checkpoint, load_checkpoint_predictor, load_predictor, task_classes, task_kind
    from medseg.wsi.stain import load_stain
    from medseg.wsi.config import SlideStitchConfig
    from medseg.wsi.stitch_slide import stitch_slide

    from medseg.inference.device import resolve_device

    config = SlideStitchConfig(tile=args.tile, overlap=args.overlap, mode=args.mode, batch_size=args.batch_size,
                               level=args.level, mpp=args.mpp, device=args.device, slide_mpp=args.slide_mpp)
    device = resolve_device(args.device)
    path, classes, kind, stain = Path(args.predictor), args.classes, "labels", None
    if path.suffix != ".pt2" and path.is_file() and is_checkpoint(path):
        predictor, meta = load_checkpoint_predictor(path, device, args.activation)
        kind = task_kind(meta)
        classes = classes or task_classes(meta)
        if args.stain == "auto" and (path.parent / "stain.json").exists():
            stain = load_stain(path.parent / "stain.json")
            log.info("stain target %s (%s)", path.parent / "stain.json", stain.method if stain else "none")
    else:
        predictor = load_predictor(args.predictor, device, args.activation)
    if args.stain not in ("auto", "none"):
        stain = load_stain(args.stain)
    if classes == ["none"]:
        classes = None
    summary = stitch_slide(args.input, args.output, predictor, config, progress=args.progress, stain=stain,
                           classes=classes, kind=kind)
    log.info("stitched %s", json.dumps(summary))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from medseg.wsi.demo import DemoConfig, make_demo_dataset, resolve_cmu

    make_demo_dataset(args.output, DemoConfig(n_slides=args.n_slides, size=args.size, seed=args.seed),
                      resolve_cmu(args.cmu))
    return 0


def run_sheet(args: argparse.Namespace) -> int:
    from medseg.wsi.sheet import build_slide_sheet, write_sheet

    rows = build_slide_sheet(args.input, args.annotations, args.classes, test_fraction=args.test_fraction,
                             val_fraction=args.val_fraction, seed=args.seed, mpp_override=args.slide_mpp)
    write_sheet(rows, args.output)
    return 0


def run_stain(args: argparse.Namespace) -> int:
    from medseg.wsi.config import split_of
    from medseg.wsi.sheet import read_sheet
    from medseg.wsi.tiles import fit_stain_target

    rows = [r for r in read_sheet(args.input) if split_of(r) == "train" and not r["problem"]]
    fit_stain_target([r["slide"] for r in rows], args.method, args.mpp).save(args.output)
    return 0


def run_tiles(args: argparse.Namespace) -> int:
    from medseg.wsi.stain import load_stain
    from medseg.wsi.config import TileConfig
    from medseg.wsi.tiles import tile_slide

    stain = load_stain(args.stain)
    tile_slide(args.input, args.annotation, args.classes, args.output,
               TileConfig(mpp=args.mpp, tile=args.tile, per_class=args.per_class, seed=args.seed), stain,
               mpp0=args.slide_mpp)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from medseg.io import write_json
    from medseg.wsi.config import SlideEvalConfig
    from medseg.wsi.evaluate import evaluate_slide, plot_outlines
    from medseg.wsi.slide import open_slide
    from medseg.wsi.tissue import read_thumbnail

    slide_path = Path(args.slide)
    with open_slide(slide_path) as slide:
        size = (slide.dimensions[1], slide.dimensions[0])
        thumb = read_thumbnail(slide, 1024)[0] if args.png else None
    config = SlideEvalConfig(min_object_px=args.min_object_px, object_iou=args.object_iou)
    result, ref, pred = evaluate_slide(Path(args.input) / "probabilities.zarr", args.annotation, args.classes,
                                       slide_path.stem, args.mpp, args.kind, slide_size=size, config=config)
    write_json(result, args.output)
    if args.png:
        dice = ", ".join(f"{c} {result['labels'][c]['dice']:.2f}" for c in args.classes)
        plot_outlines(thumb, ref, pred, args.classes, args.png, f"{slide_path.stem}: Dice {dice}")
    return 0
