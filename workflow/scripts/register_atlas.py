from pathlib import Path

from medseg import tracking
from medseg.cohort.sheet import case_row
from medseg.config import from_mapping
from medseg.io import write_json
from medseg.jobs import job
from medseg.preprocess.register import RegConfig
from medseg.preprocess.stages import register_case, stage_images

with job(snakemake) as p:
    out, mods, case = snakemake.output, p["modalities"], snakemake.wildcards.case
    case_row(snakemake.input.sheet, case)
    cfg = from_mapping(RegConfig, p["register"], "preprocessing.register.") if p["enabled"] else None
    qc = register_case(case, stage_images(snakemake.input.images, mods), p["seg"], p["reference"],
                       stage_images(out.images, mods), f"{out.images}/seg.nii.gz",
                       {**{m: f"{out.images}/tfm_{m}.tfm" for m in mods}, "atlas": out.atlas_transform},
                       cfg, p["skull_stripped"], atlas_dir=str(Path(snakemake.input.atlas).parent), qc_png=out.qc_png,
                       out_warp=out.warp)
    write_json(qc, out.qc)
    tracking.log_metrics(qc)
    tracking.log_artifact(out.qc_png, "qc")
