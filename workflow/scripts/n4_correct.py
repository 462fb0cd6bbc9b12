from medseg import tracking
from medseg.cohort.sheet import case_row
from medseg.config import from_mapping
from medseg.io import write_json
from medseg.jobs import job
from medseg.preprocess.n4 import N4Config
from medseg.preprocess.stages import n4_case

with job(snakemake) as p:
    row, mods = case_row(snakemake.input.sheet, snakemake.wildcards.case), p["modalities"]
    cfg = from_mapping(N4Config, p["n4"], "preprocessing.n4.") if p["enabled"] else None
    qc = n4_case(snakemake.wildcards.case, {m: row[m] for m in mods}, dict(zip(mods, snakemake.output.images)),
                 dict(zip(mods, snakemake.output.fields)), cfg, qc_png=snakemake.output.qc_png,
                 truth_dir=p["truth_dir"])
    write_json(qc, snakemake.output.qc)
    tracking.log_metrics(qc)
    tracking.log_artifact(snakemake.output.qc_png, "qc")
