from medseg.pipeline.job import job
from medseg.training.launch import train_job

with job(snakemake) as p:
    train_job(snakemake.input, snakemake.output.model, snakemake.wildcards, p["run"], snakemake.threads,
              int(snakemake.resources.get("gpu", 0) or 0))
