from medseg.cohort.sheet import case_row
from medseg.evaluate.report import evaluate_case_job
from medseg.pipeline.job import job

with job(snakemake) as p:
    inp, case = snakemake.input, snakemake.wildcards.case
    case_row(inp.sheet, case)  # a case the sheet found unusable fails here, with its problem
    evaluate_case_job(case, inp.pred, p["seg"], inp.task, p["evaluation"], snakemake.output.json)
