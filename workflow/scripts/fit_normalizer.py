from medseg.config import from_mapping
from medseg.jobs import job
from medseg.preprocess.normalize import NormConfig
from medseg.preprocess.stages import fit_normalizer

with job(snakemake) as p:
    mods, n = p["modalities"], len(p["modalities"])
    images = [dict(zip(mods, snakemake.input.images[i * n:(i + 1) * n])) for i in range(len(p["cases"]))]
    fit_normalizer(p["cases"], images, snakemake.input.masks, snakemake.output.model,
                   from_mapping(NormConfig, p["normalize"], "preprocessing.normalize."))
