from medseg.cohort.listing import list_cases
from medseg.cohort.sheet import plan_sheet
from medseg.pipeline.job import job

with job(snakemake) as p:
    plan = list_cases(snakemake.wildcards.dataset, p["dataset"])
    plan_sheet(plan, snakemake.output.tsv, snakemake.output.task, full=p["validate"] == "full",
               same_space=not p["register"], bad_cases=p["bad_cases"], threads=snakemake.threads)
