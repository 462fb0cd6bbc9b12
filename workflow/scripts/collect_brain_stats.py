from medseg.pipeline.job import job
from medseg.preprocess.intensity import collect_case_stats

with job(snakemake) as p:
    collect_case_stats(p["cases"], snakemake.input, snakemake.output.table, p["modalities"], snakemake.threads)
