from medseg.cohort.sheet import case_row
from medseg.config import from_mapping
from medseg.jobs import job
from medseg.preprocess.normalize import NormConfig
from medseg.preprocess.stages import tile_training_case

with job(snakemake) as p:
    inp, case = snakemake.input, snakemake.wildcards.case
    row = case_row(inp.sheet, case)
    seg = inp.seg or row["seg"]  # steps.register off, demo cohort: the label map the sheet lists
    tile_training_case(case, dict(zip(p["modalities"], inp.images)), inp.mask or None, seg, inp.models,
                       snakemake.output.npy, snakemake.output.table,
                       from_mapping(NormConfig, p["normalize"], "preprocessing.normalize."), row["convention"])
