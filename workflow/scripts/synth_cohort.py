from pathlib import Path

from medseg.cohort.synth import SynthConfig, generate_cohort
from medseg.jobs import job

with job(snakemake) as p:
    generate_cohort(SynthConfig.from_dict(p["demo"]), Path(snakemake.output.manifest).parent, workers=snakemake.threads)
