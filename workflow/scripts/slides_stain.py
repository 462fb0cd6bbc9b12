from medseg.pipeline.job import job
from medseg.wsi.tiles import fit_stain

with job(snakemake) as p:
    fit_stain(p["slides"], p["recipe"], snakemake.output.stain)
