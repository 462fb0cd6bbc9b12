from medseg.config import from_mapping
from medseg.jobs import job
from medseg.preprocess.normalize import NormConfig
from medseg.preprocess.stages import landmarks_case

with job(snakemake) as p:
    landmarks_case(snakemake.wildcards.case, dict(zip(p["modalities"], snakemake.input.images)), snakemake.input.mask,
                   snakemake.output.landmarks, from_mapping(NormConfig, p["normalize"], "preprocessing.normalize."))
