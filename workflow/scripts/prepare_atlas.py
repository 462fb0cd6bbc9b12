from pathlib import Path

from medseg.pipeline.job import job
from medseg.preprocess.atlas import atlas_images

with job(snakemake):
    spacing = float(snakemake.wildcards.spacing)
    atlas_images(spacing).save(Path(snakemake.output[0]).parent)
