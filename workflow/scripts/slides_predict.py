from medseg.pipeline.job import job
from medseg.wsi.stitch_slide import predict_slide

with job(snakemake) as p:
    predict_slide(p["slide"], snakemake.input.model, snakemake.input.stain, p["recipe"], snakemake.output.tiff)
