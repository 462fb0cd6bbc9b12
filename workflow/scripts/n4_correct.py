from medseg import tracking
from medseg.cohort.sheet import case_row
from medseg.config import from_mapping
from medseg.io import write_json
from medseg.jobs import job
from medseg.preprocess.n4 import N4Config
from medseg.preprocess.stages import n4_case, stage_images

with job(snakemake) as p:
    case, mods, out = snakemake.wildcards.case, p["modalities"], snakemake.output
    case_row(snakemake.input.sheet, case)  # a case the sheet found unusable fails here, with its problem
    cfg = from_mapping(N4Config, p["n4"], "preprocessing.n4.") if p["enabled"] else None
    qc = n4_case(case, p["files"], stage_images(out.images, mods),
                 {m: f"{out.images}/bias_{m}.nii.gz" for m in mods}, cfg, qc_png=out.qc_png,
                 truth_dir=p["truth_dir"], channels=p["channels"], spacing_mm=p["spacing_mm"],
                 orientation=p["orientation"])
    write_json(qc, out.qc)
    tracking.log_metrics(qc)
    tracking.log_artifact(out.qc_png, "qc")
