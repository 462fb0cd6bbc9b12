from pathlib import Path

from medseg.config import from_mapping
from medseg.io import write_json
from medseg.jobs import job
from medseg.wsi.predictors import load_checkpoint_predictor, task_kind
from medseg.wsi.stain import load_stain
from medseg.wsi.stitch_slide import SlideStitchConfig, stitch_slide

with job(snakemake) as p:
    predictor, meta = load_checkpoint_predictor(snakemake.input.model)
    config = from_mapping(SlideStitchConfig, {**p["predict"], "mpp": p["mpp"], "slide_mpp": p["slide_mpp"]},
                          f"datasets.{snakemake.wildcards.slideset}.predict.")
    summary = stitch_slide(p["slide"], Path(snakemake.output.tiff).parent, predictor, config,
                           stain=load_stain(snakemake.input.stain), classes=p["classes"], kind=task_kind(meta))
    write_json(summary, snakemake.output.summary)
