from medseg.cohort.plan import dataset_plan
from medseg.cohort.sheet import plan_sheet
from medseg.jobs import job

with job(snakemake) as p:
    plan = dataset_plan(snakemake.wildcards.dataset, p["dataset"])
    plan_sheet(plan, snakemake.output.tsv, snakemake.output.task, full=p["validate"] == "full",
               same_space=not p["register"], bad_cases=p["bad_cases"], threads=snakemake.threads)
