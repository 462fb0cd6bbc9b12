from pathlib import Path

from medseg.pipeline.job import job
from medseg.wsi.stain import load_stain
from medseg.wsi.tiles import tile_slide

with job(snakemake) as p:
    r = p["recipe"]
    tile_slide(p["slide"], p["annotation"], r.classes, Path(snakemake.output.npy).with_suffix(""), r.tiles,
               load_stain(snakemake.input.stain), mpp0=r.mpp)
