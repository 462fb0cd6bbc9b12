from medseg.cohort.sheet import case_row, read_task
from medseg.config import from_mapping
from medseg.jobs import job
from medseg.preprocess.normalize import NormConfig
from medseg.preprocess.stages import stage_images, tile_training_case

with job(snakemake) as p:
    inp, case = snakemake.input, snakemake.wildcards.case
    case_row(inp.sheet, case)
    seg = f"{inp.seg}/seg.nii.gz" if p["register"] else p["seg_file"]  # reg/seg.nii.gz, or the source label map
    tile_training_case(case, stage_images(inp.images, p["modalities"]), inp.mask or None, seg, inp.models,
                       snakemake.output.npy, snakemake.output.table,
                       from_mapping(NormConfig, p["normalize"], "preprocessing.normalize."), read_task(inp.task))
