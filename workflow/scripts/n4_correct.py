from medseg import tracking
from medseg.cohort.sheet import case_row
from medseg.pipeline.job import job
from medseg.preprocess.stages import n4_case

with job(snakemake) as p:
    case_row(snakemake.input.sheet, p["job"].case)  # a case the sheet found unusable fails here, with its problem
    tracking.log_metrics(n4_case(p["job"], p["stage"]))
    tracking.log_artifact(snakemake.output.qc_png, "qc")
