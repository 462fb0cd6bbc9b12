from medseg.evaluate.report import aggregate_job
from medseg.pipeline.job import job

with job(snakemake) as p:
    aggregate_job(p["request"], snakemake.input, snakemake.output, snakemake.rule)
