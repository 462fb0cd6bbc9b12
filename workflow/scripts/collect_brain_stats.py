from medseg.jobs import job
from medseg.preprocess.stages import collect_stats

with job(snakemake):
    collect_stats(snakemake.input.stats, snakemake.output.table)
