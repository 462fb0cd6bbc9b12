from medseg import tracking
from medseg.config import from_mapping
from medseg.io import write_json
from medseg.jobs import job
from medseg.preprocess.skullstrip import SkullstripConfig
from medseg.preprocess.stages import brain_stats, skullstrip_case, stage_images

with job(snakemake) as p:
    case, out = snakemake.wildcards.case, snakemake.output
    images = stage_images(snakemake.input.images, p["modalities"])
    cfg = from_mapping(SkullstripConfig, p["skullstrip"], "preprocessing.skullstrip.")
    inp = snakemake.input
    qc = skullstrip_case(case, images[p["modality"]], out.mask, cfg, qc_png=out.qc_png,
                         atlas_transform=inp.atlas_transform or None, atlas_warp=inp.atlas_warp or None)
    write_json(qc, out.qc)
    brain_stats(case, images, out.mask, out.stats)
    tracking.log_metrics(qc)
    tracking.log_artifact(out.qc_png, "qc")
