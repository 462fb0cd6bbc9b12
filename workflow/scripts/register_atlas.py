from pathlib import Path

from medseg import tracking
from medseg.cohort.sheet import case_row
from medseg.pipeline.job import job
from medseg.preprocess.stages import register_case

with job(snakemake) as p:
    case_row(snakemake.input.sheet, p["job"].case)
    tracking.log_metrics(register_case(p["job"], p["stage"], atlas_dir=str(Path(snakemake.input.atlas).parent)))
    tracking.log_artifact(snakemake.output.qc_png, "qc")
