from medseg.cohort.sheet import case_row, read_task
from medseg.pipeline.job import job
from medseg.preprocess.intensity import tile_training_case

with job(snakemake) as p:
    inp = snakemake.input
    case_row(inp.sheet, p["job"].case)
    tile_training_case(p["job"], p["stage"], inp.models, read_task(inp.task), snakemake.output.npy)
