from medseg.cohort.sheet import case_row, read_task
from medseg.inference.case import predict_case
from medseg.pipeline.job import job

with job(snakemake) as p:
    inp = snakemake.input
    case_row(inp.sheet, p["job"].case)
    predict_case(p["job"], p["stage"], inp.models, p["inference"], read_task(inp.task), snakemake.output.labels)
