from medseg.jobs import job
from medseg.preprocess.stages import collect_landmarks

with job(snakemake):
    collect_landmarks(snakemake.input.landmarks, snakemake.output.table)
