from medseg.pipeline.job import job
from medseg.wsi.evaluate import aggregate_slides_job

with job(snakemake) as p:
    aggregate_slides_job(p["config"], snakemake.input, snakemake.output, snakemake.rule,
                         dict(snakemake.wildcards.items()))
