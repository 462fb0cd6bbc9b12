from medseg.jobs import job
from medseg.preprocess.stages import gather_normalizers

with job(snakemake):
    gather_normalizers(snakemake.input, snakemake.output[0])
