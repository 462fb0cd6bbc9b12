from medseg.pipeline.job import job
from medseg.preprocess.intensity import normalize_case

with job(snakemake) as p:
    normalize_case(p["job"], p["stage"], snakemake.input.models)
