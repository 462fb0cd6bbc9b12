from pathlib import Path

from medseg import tracking
from medseg.cohort.sheet import case_row
from medseg.config import from_mapping
from medseg.io import write_json
from medseg.jobs import job
from medseg.preprocess.register import RegConfig
from medseg.preprocess.stages import register_case

with job(snakemake) as p:
    out, mods = snakemake.output, p["modalities"]
    row = case_row(snakemake.input.sheet, snakemake.wildcards.case)
    cfg = from_mapping(RegConfig, p["register"], "preprocessing.register.") if p["enabled"] else None
    qc = register_case(snakemake.wildcards.case, dict(zip(mods, snakemake.input.images)), row["seg"], p["reference"],
                       dict(zip(mods, out.images)), out.seg, {**dict(zip(mods, out.transforms)), "atlas": out.atlas_transform},
                       cfg, p["skull_stripped"], atlas_dir=str(Path(snakemake.input.atlas).parent), qc_png=out.qc_png,
                       out_warp=out.warp)
    write_json(qc, out.qc)
    tracking.log_metrics(qc)
    tracking.log_artifact(snakemake.output.qc_png, "qc")
