"""Peak memory of whole-slide prediction as the slide grows (must stay flat), through the workflow's
own ``slides_predict`` rule with a model the workflow trained.

1. A model: ``--model model.pt`` (with ``stain.json`` beside it), else the slide demo's
   ``results/slides/models/timm/fold_0/model.pt`` trained by the workflow in the work folder
   (``config.yaml``'s ``slides`` dataset, a few minutes; reused when present).
2. Square synthetic pyramidal slides (tiled JPEG BigTIFF at 0.5 mpp, written tile by tile: never
   whole in memory) of each ``--sizes`` side, in a slide dataset folder ``bigslides/slides/``.
3. ``snakemake --allowed-rules slides_predict`` on a dataset ``wsibench`` (``kind: slide``, that
   folder) with the model and stain target in place: the rule loads the checkpoint, normalises the
   stain, predicts every tissue window, blends (gaussian) into the out-of-core zarr accumulator and
   writes the pyramidal OME-TIFF and the GeoJSON. Peak RSS and wall time per slide come from the
   rule's Snakemake benchmark file (``max_rss``).

Printed: one row per size (windows, seconds, peak RSS) and the ratio of the largest slide's peak
RSS to the smallest's (flat: about 1 while the pixel count grows 16x).
``--identity`` measures the stitching engine alone instead (``identity`` predictor, no rule).

Usage::

    python benchmarks/bench_wsi_memory.py                         # 10k, 20k, 40k px; about 20 min on 2 cores
    python benchmarks/bench_wsi_memory.py --sizes 4000 8000 --mpp 2.0   # a quick check
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

log = logging.getLogger("bench_wsi_memory")

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out" / "wsi_memory"
DEMO_MODEL = "results/slides/models/timm/fold_0"


def child(task: str, slide: str, out: str, tile: int, overlap: float, batch_size: int) -> None:
    """Run one task in this (fresh) process and print a JSON line with seconds and peak RSS."""
    t0 = time.perf_counter()
    result: dict = {}
    if task == "generate":
        from medseg.wsi.synthetic import write_synthetic_slide
        write_synthetic_slide(slide, int(out), compression="jpeg")
    else:
        from medseg.wsi.predictors import identity
        from medseg.wsi.config import SlideStitchConfig
        from medseg.wsi.stitch_slide import stitch_slide
        result = stitch_slide(slide, out, identity, SlideStitchConfig(tile=tile, overlap=overlap,
                                                                       batch_size=batch_size))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_mb, "windows": result.get("windows")}))


def run_child(*args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def snakemake(workdir: Path, configs: list[Path], *args: str) -> None:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / "config.yaml"), *map(str, configs), "--cores", "2", "--show-failed-logs", *args]
    log.info("+ %s", " ".join(cmd))
    env = {**os.environ, "MEDSEG_TRACKING": "0"}
    if subprocess.run(cmd, env=env, check=False).returncode:
        sys.exit(f"snakemake failed: {' '.join(cmd)}")


def trained_model(workdir: Path, model: str | None) -> tuple[Path, Path]:
    """``(model.pt, stain.json)``: the given checkpoint, else the slide demo's (trained here if missing)."""
    if model:
        pt = Path(model)
        stain = pt.parent / "stain.json"
        if not pt.is_file() or not stain.is_file():
            sys.exit(f"--model needs {pt} and {stain} (a slides_train output and its stain target)")
        return pt, stain
    folder = workdir / DEMO_MODEL
    if not (folder / "model.pt").exists() or not (folder / "stain.json").exists():
        snakemake(workdir, [], f"{DEMO_MODEL}/model.pt", f"{DEMO_MODEL}/stain.json")
    return folder / "model.pt", folder / "stain.json"


def predict_rule(args: argparse.Namespace, slides: dict[int, Path]) -> list[tuple[int, dict]]:
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    pt, stain = trained_model(work, args.model)
    source = OUT / "bigslides"
    (source / "annotations").mkdir(parents=True, exist_ok=True)  # prediction needs none
    for path in slides.values():
        link = source / "slides" / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(path)
    cfg = work / "wsibench.yaml"
    cfg.write_text(yaml.safe_dump({
        "tracking": {"enabled": False},
        "datasets": {"wsibench": {"kind": "slide", "source": str(source), "classes": ["skin", "colon"],
                                  "tiles": {"mpp": args.mpp},
                                  "predict": {"tile": args.tile, "overlap": args.overlap, "mode": "gaussian",
                                              "batch_size": args.batch_size}}}}))
    dest = work / "results/wsibench/models/timm/fold_0"
    dest.mkdir(parents=True, exist_ok=True)
    for f in (pt, stain):
        shutil.copy2(f, dest / f.name)
    pred = work / "results/wsibench/predictions/timm"
    targets = [f"results/wsibench/predictions/timm/{p.stem}/probabilities.ome.tif" for p in slides.values()]
    shutil.rmtree(pred, ignore_errors=True)
    snakemake(work, [cfg], *targets, "--allowed-rules", "slides_predict")  # (nargs=+: after the targets)
    rows = []
    for size, path in slides.items():
        with open(work / f"results/wsibench/benchmarks/slides_predict/timm_{path.stem}.tsv") as f:
            bench = next(csv.DictReader(f, delimiter="\t"))
        summary = json.loads((pred / path.stem / "summary.json").read_text())
        rows.append((size, {"windows": summary["windows"], "seconds": float(bench["s"]),
                            "peak_rss_mb": float(bench["max_rss"])}))
        if not args.keep:
            for big in ("probabilities.zarr", "probabilities.ome.tif"):
                p = pred / path.stem / big
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 40_000], help="slide sides in px")
    parser.add_argument("--tile", type=int, default=512, help="prediction window side (px at --mpp)")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--mpp", type=float, default=1.0, help="prediction microns per pixel (the slides are 0.5)")
    parser.add_argument("--model", default=None, help="model.pt with stain.json beside it (default: train the demo's)")
    parser.add_argument("--workdir", type=Path, default=OUT / "work", help="Snakemake working folder")
    parser.add_argument("--identity", action="store_true", help="the stitching engine alone (identity predictor)")
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
    slides = {}
    for size in args.sizes:
        slide = OUT / f"synthetic_{size}.tif"
        if not slide.exists():
            gen = run_child("generate", str(slide), str(size), "0", "0", "0")
            log.info("generated %s in %.0f s (peak RSS %.0f MB, %.0f MB on disk)", slide.name, gen["seconds"],
                     gen["peak_rss_mb"], slide.stat().st_size / 1e6)
        slides[size] = slide
    if args.identity:
        rows = []
        for size, slide in slides.items():
            out = OUT / f"stitched_{size}"
            rows.append((size, run_child("stitch", str(slide), str(out), str(args.tile), str(args.overlap),
                                         str(args.batch_size))))
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    else:
        rows = predict_rule(args, slides)
    what = "identity predictor, stitching only" if args.identity else f"slides_predict rule, trained timm U-Net, {args.mpp} mpp"
    log.info("\n%s (tile %d, overlap %s, batch %d)", what, args.tile, args.overlap, args.batch_size)
    log.info("size_px  megapixels  windows  seconds  peak_rss_mb")
    for size, res in rows:
        log.info("%7d  %10.0f  %7d  %7.0f  %11.0f", size, size * size / 1e6, res["windows"], res["seconds"],
                 res["peak_rss_mb"])
    (small, rs), (big, rb) = rows[0], rows[-1]
    log.info("peak RSS %d px / %d px: %.2fx for %.0fx the pixels (total %.0f s)", big, small,
             rb["peak_rss_mb"] / rs["peak_rss_mb"], (big / small) ** 2, time.perf_counter() - t_all)
    (OUT / "bench_wsi_memory.json").write_text(json.dumps({"mode": what, "rows": [{"size": s, **r} for s, r in rows]},
                                                          indent=2))


if __name__ == "__main__":
    main()
