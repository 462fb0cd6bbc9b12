from medseg.pipeline.job import job
from medseg.preprocess.intensity import fit_normalizer

with job(snakemake) as p:
    fit_normalizer(p["cases"], snakemake.input.table, snakemake.output.model, p["normalize"], p["modalities"])
