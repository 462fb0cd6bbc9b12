"""Seam artefacts and speed of medseg's slide stitching against MONAI's PatchInferer + AvgMerger.

Same model, same slide level, same window size and overlap. The reference is the model run once
on the whole level (a fully convolutional network has no seams then); each stitched map is
compared with it on tissue pixels (RMSE and 99th percentile of the absolute probability error:
seams show up there). medseg runs out of core from the slide file, tissue windows only, gaussian
weighting; MONAI runs on the level loaded in memory, every window, plain averaging. Printed as
ratios medseg / MONAI (< 1: medseg better or faster).

Usage: ``PYTHONPATH=src python benchmarks/bench_wsi.py [--model results/.../model.pt] [--cmu cmu_small_region.svs]``
Without ``--model``: a seeded, untrained timm U-Net (resnet10t, 3 classes, softmax).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("bench_wsi")
OUT = Path(__file__).resolve().parent / "out" / "wsi"


def make_model(path: str | None) -> torch.nn.Module:
    from medseg.models.unet import ModelConfig
    from medseg.models import build_model

    if path:
        from medseg.models.checkpoint import load_model

        return load_model(path)[0]
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="resnet10t", in_channels=3, out_channels=3,
                                    decoder_channels=(32, 32, 16, 16, 16)))
    for m in model.modules():  # untrained BatchNorm running stats are 0/1: fine, but make them non-trivial
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="medseg model.pt (default: untrained seeded U-Net)")
    parser.add_argument("--cmu", default=None, help="cmu_small_region.svs for the demo slide (default: fallback)")
    parser.add_argument("--size", type=int, default=2560, help="demo slide level-0 side")
    parser.add_argument("--mpp", type=float, default=1.0)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from monai.inferers import AvgMerger, PatchInferer, SlidingWindowSplitter

    from medseg.wsi.demo import DemoConfig, make_demo_dataset
    from medseg.wsi.slide import open_slide, read_region, select_level
    from medseg.wsi.config import SlideStitchConfig
    from medseg.wsi.stitch_slide import stitch_slide
    from medseg.wsi.tissue import tissue_mask

    OUT.mkdir(parents=True, exist_ok=True)
    slide_path = OUT / "demo" / "slides" / "slide_00.tif"
    if not slide_path.exists():
        make_demo_dataset(OUT / "demo", DemoConfig(n_slides=1, size=args.size), args.cmu)
    model = make_model(args.model)

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(batch), dim=1)

    with open_slide(slide_path) as slide:
        level = select_level(slide, slide_path, mpp=args.mpp)
        rgb = read_region(slide, level, 0, 0, level.height, level.width)
        mask, scale = tissue_mask(slide)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.0)
    log.info("slide %s level %d: %d x %d px", slide_path.name, level.level, level.height, level.width)

    with torch.inference_mode():
        t0 = time.perf_counter()
        reference = predictor(image)[0].numpy()
        t_whole = time.perf_counter() - t0

        t0 = time.perf_counter()
        summary = stitch_slide(slide_path, OUT / "medseg", predictor,
                               SlideStitchConfig(tile=args.tile, overlap=args.overlap, mode="gaussian", mpp=args.mpp,
                                                 batch_size=args.batch_size))
        t_medseg = time.perf_counter() - t0
        import zarr
        medseg = zarr.open_group(summary["zarr"], mode="r")["0"][...]

        overlap_px = int(round(args.tile * args.overlap))
        inferer = PatchInferer(splitter=SlidingWindowSplitter(args.tile, overlap=overlap_px), merger_cls=AvgMerger,
                               batch_size=args.batch_size)
        t0 = time.perf_counter()
        monai_out = inferer(image, predictor)[0].numpy()
        t_monai = time.perf_counter() - t0

    # tissue pixels of the level (coarse mask upsampled), away from the slide edge
    ratio = scale / level.downsample
    iy = np.minimum((np.arange(level.height) / ratio).astype(int), mask.shape[0] - 1)
    ix = np.minimum((np.arange(level.width) / ratio).astype(int), mask.shape[1] - 1)
    tissue = mask[iy][:, ix] & (medseg.sum(axis=0) > 0)

    def errors(pred: np.ndarray) -> dict:
        err = np.abs(pred - reference)[:, tissue]
        return {"rmse": float(np.sqrt((err**2).mean())), "p99_abs": float(np.percentile(err, 99)),
                "max_abs": float(err.max())}

    rows = {"medseg": {**errors(medseg), "seconds": t_medseg, "windows": summary["windows"]},
            "monai": {**errors(monai_out), "seconds": t_monai},
            "whole_level": {"seconds": t_whole}}
    ratios = {k: rows["medseg"][k] / max(rows["monai"][k], 1e-12) for k in ("rmse", "p99_abs", "max_abs", "seconds")}
    result = {"slide": str(slide_path), "level": level.level, "shape": [level.height, level.width],
              "tile": args.tile, "overlap": args.overlap, "model": args.model or "untrained resnet10t U-Net",
              "tissue_fraction": float(tissue.mean()), "rows": rows, "ratios_medseg_over_monai": ratios}
    (OUT / "bench_wsi.json").write_text(json.dumps(result, indent=2))
    log.info("method   rmse     p99_abs  max_abs  seconds")
    for name in ("medseg", "monai"):
        r = rows[name]
        log.info("%-7s  %.5f  %.5f  %.5f  %6.1f", name, r["rmse"], r["p99_abs"], r["max_abs"], r["seconds"])
    log.info("whole level in one pass: %.1f s", t_whole)
    log.info("ratios medseg / MONAI: %s", ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
