from medseg.pipeline.job import job
from medseg.wsi.evaluate import evaluate_slide_job

with job(snakemake) as p:
    evaluate_slide_job(snakemake.wildcards.case, p["slide"], p["annotation"], snakemake.input.tiff, p["recipe"],
                       snakemake.output.json, snakemake.output.png)
