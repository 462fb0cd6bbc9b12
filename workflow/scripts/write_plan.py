from medseg import tracking
from medseg.cohort.sheet import read_task
from medseg.pipeline.job import job
from medseg.plan.resolved import write_plan

with job(snakemake) as p:
    write_plan(p["plan"].with_task(read_task(snakemake.input.task)), snakemake.output.plan)
    tracking.log_artifact(snakemake.output.plan)
