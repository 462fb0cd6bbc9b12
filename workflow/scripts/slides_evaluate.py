from pathlib import Path

from medseg.io import write_json
from medseg.jobs import job
from medseg.wsi.evaluate import evaluate_slide, plot_outlines
from medseg.wsi.slide import open_slide
from medseg.wsi.tissue import read_thumbnail

with job(snakemake) as p:
    ev, slide_id = p["evaluation"], snakemake.wildcards.slide
    with open_slide(p["slide"]) as slide:
        size = (slide.dimensions[1], slide.dimensions[0])
        thumb, _ = read_thumbnail(slide, 1024)
    result, ref, pred = evaluate_slide(Path(snakemake.input.tiff).parent / "probabilities.zarr", p["annotation"],
                                       p["classes"], slide_id, ev.get("mpp", 2.0), "labels",
                                       ev.get("min_object_px", 16), ev.get("object_iou", 0.5), slide_size=size)
    write_json(result, snakemake.output.json)
    dice = ", ".join(f"{c} {result['labels'][c]['dice']:.2f}" for c in p["classes"])
    plot_outlines(thumb, ref, pred, p["classes"], snakemake.output.png,
                  f"{slide_id}: Dice {dice} (solid: reference, dashed: prediction)")
