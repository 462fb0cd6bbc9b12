from medseg.cohort.sheet import build_case_sheet
from medseg.jobs import job

with job(snakemake) as p:
    build_case_sheet(p["root"], p["layout"], p["cases"], p["splits"], p["modalities"], p["convention"],
                     snakemake.output.tsv, full=p["validate"] == "full", same_space=not p["register"],
                     bad_cases=p["bad_cases"], threads=snakemake.threads)
