from medseg.config import from_mapping
from medseg.jobs import job
from medseg.preprocess.normalize import NormConfig
from medseg.preprocess.stages import fit_normalizer

with job(snakemake) as p:
    fit_normalizer(p["cases"], snakemake.input.table, snakemake.output.model,
                   from_mapping(NormConfig, p["normalize"], "preprocessing.normalize."), p["modalities"])
