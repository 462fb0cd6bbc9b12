"""Peak memory of out-of-core whole-slide stitching as the slide grows (must stay flat).

For each size, a square synthetic pyramidal slide (tiled JPEG BigTIFF, written tile by tile) is
generated once, then stitched with the ``identity`` predictor through the zarr backend in a fresh
subprocess, which reports its own peak RSS. Outputs go to ``benchmarks/out/wsi_memory/``.

Usage: ``PYTHONPATH=src python benchmarks/bench_wsi_memory.py [--sizes 10000 20000 40000] [--tile 1024]``
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("bench_wsi_memory")

OUT = Path(__file__).resolve().parent / "out" / "wsi_memory"


def child(task: str, slide: str, out: str, tile: int, overlap: float, batch_size: int) -> None:
    """Run one task in this (fresh) process and print a JSON line with seconds and peak RSS."""
    t0 = time.perf_counter()
    result: dict = {}
    if task == "generate":
        from medseg.wsi.synthetic import write_synthetic_slide
        write_synthetic_slide(slide, int(out), compression="jpeg")
    else:
        from medseg.wsi.predictors import identity
        from medseg.wsi.stitch_slide import SlideStitchConfig, stitch_slide
        result = stitch_slide(slide, out, identity, SlideStitchConfig(tile=tile, overlap=overlap,
                                                                       batch_size=batch_size))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_mb, "windows": result.get("windows")}))


def run_child(*args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 40_000], help="slide sides in px")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the stitched outputs (slides are always kept)")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task, slide, out, tile, overlap, batch = args.child
        child(task, slide, out, int(tile), float(overlap), int(batch))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    rows = []
    for size in args.sizes:
        slide = OUT / f"synthetic_{size}.tif"
        if not slide.exists():
            gen = run_child("generate", str(slide), str(size), "0", "0", "0")
            log.info("generated %s in %.0f s (peak RSS %.0f MB, %.0f MB on disk)", slide.name, gen["seconds"],
                     gen["peak_rss_mb"], slide.stat().st_size / 1e6)
        out = OUT / f"stitched_{size}"
        res = run_child("stitch", str(slide), str(out), str(args.tile), str(args.overlap), str(args.batch_size))
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        rows.append((size, res))
        log.info("%6d px: %4d windows, %6.0f s, peak RSS %6.0f MB", size, res["windows"], res["seconds"],
                 res["peak_rss_mb"])
    log.info("size_px  windows  seconds  peak_rss_mb")
    for size, res in rows:
        log.info("%7d  %7d  %7.0f  %11.0f", size, res["windows"], res["seconds"], res["peak_rss_mb"])
    log.info("total %.0f s (tile %d, overlap %s, batch %d)", time.perf_counter() - t_all, args.tile, args.overlap,
             args.batch_size)


if __name__ == "__main__":
    main()
