from medseg import tracking
from medseg.inference.bundle import export_bundle
from medseg.pipeline.job import job
from medseg.plan.resolved import read_plan

with job(snakemake) as p:
    inp, out, w = snakemake.input, snakemake.output.bundle, snakemake.wildcards
    export_bundle(out, read_plan(inp.plan), w.model, inp.normalizers, inp.models)
    tracking.log_artifact(f"{out}/bundle.json", "bundle")
    # the MLflow model <dataset>_<model> (pyfunc: raw scans -> label map), logged from the bundle by the syncer
    tracking.log_model_bundle(out, w.dataset, w.model)
