from medseg.pipeline.job import job
from medseg.preprocess.intensity import gather_normalizers

with job(snakemake):
    gather_normalizers(snakemake.input, snakemake.output[0])
