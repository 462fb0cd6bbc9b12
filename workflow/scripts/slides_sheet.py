from medseg.pipeline.job import job
from medseg.wsi.sheet import write_slide_sheet

with job(snakemake) as p:
    write_slide_sheet(p["listing"], p["recipe"], p["split"], p["task"], snakemake.output.sheet, snakemake.output.task)
