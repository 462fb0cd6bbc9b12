from medseg import tracking
from medseg.bundle import export_bundle
from medseg.cohort.sheet import read_task
from medseg.jobs import job

with job(snakemake) as p:
    inp = snakemake.input
    export_bundle(snakemake.output.bundle, read_task(inp.task), inp.normalizers, inp.models, p["settings"])
    tracking.log_artifact(f"{snakemake.output.bundle}/bundle.json", "bundle")
