from medseg import tracking
from medseg.config import from_mapping
from medseg.io import write_json
from medseg.jobs import job
from medseg.preprocess.skullstrip import SkullstripConfig
from medseg.preprocess.stages import brain_stats, skullstrip_case

with job(snakemake) as p:
    cfg = from_mapping(SkullstripConfig, p["skullstrip"], "preprocessing.skullstrip.")
    qc = skullstrip_case(snakemake.wildcards.case, snakemake.input.image, snakemake.output.mask, cfg,
                         qc_png=snakemake.output.qc_png)
    write_json(qc, snakemake.output.qc)
    brain_stats(snakemake.wildcards.case, dict(zip(p["modalities"], snakemake.input.images)), snakemake.output.mask,
                snakemake.output.stats)
    tracking.log_metrics(qc)
    tracking.log_artifact(snakemake.output.qc_png, "qc")
