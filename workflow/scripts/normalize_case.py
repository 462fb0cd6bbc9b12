from medseg.config import from_mapping
from medseg.jobs import job
from medseg.preprocess.normalize import NormConfig
from medseg.preprocess.stages import normalize_case

with job(snakemake) as p:
    inp = snakemake.input
    normalize_case(snakemake.wildcards.case, dict(zip(p["modalities"], inp.images)), inp.mask or None, inp.models,
                   snakemake.output.npz, from_mapping(NormConfig, p["normalize"], "preprocessing.normalize."))
