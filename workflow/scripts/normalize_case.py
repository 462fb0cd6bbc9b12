from medseg.cohort.sheet import case_row
from medseg.config import from_mapping
from medseg.jobs import job
from medseg.preprocess.normalize import NormConfig
from medseg.preprocess.stages import normalize_case

with job(snakemake) as p:
    inp = snakemake.input
    row = case_row(inp.sheet, snakemake.wildcards.case)
    normalize_case(snakemake.wildcards.case, dict(zip(p["modalities"], inp.images)), inp.mask, inp.model, snakemake.output.npz,
                   from_mapping(NormConfig, p["normalize"], "preprocessing.normalize."),
                   seg=inp.seg if p["with_labels"] else None, convention=row["convention"])
