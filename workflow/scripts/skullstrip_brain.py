from medseg import tracking
from medseg.pipeline.job import job
from medseg.preprocess.stages import skullstrip_case

with job(snakemake) as p:
    tracking.log_metrics(skullstrip_case(p["job"], p["stage"], atlas_dir=p["atlas_dir"]))
    tracking.log_artifact(snakemake.output.qc_png, "qc")
