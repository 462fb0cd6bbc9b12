from pathlib import Path

from medseg.cohort.demos import generate_demo
from medseg.pipeline.job import job

with job(snakemake) as p:
    generate_demo(p["demo"], Path(snakemake.output.manifest).parent, workers=snakemake.threads)
