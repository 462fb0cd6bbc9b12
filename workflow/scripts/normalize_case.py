from medseg.config import from_mapping
from medseg.jobs import job
from medseg.preprocess.normalize import NormConfig
from medseg.preprocess.stages import normalize_case, stage_images

with job(snakemake) as p:
    inp = snakemake.input
    normalize_case(snakemake.wildcards.case, stage_images(inp.images, p["modalities"]), inp.mask or None, inp.models,
                   snakemake.output.npz, from_mapping(NormConfig, p["normalize"], "preprocessing.normalize."))
