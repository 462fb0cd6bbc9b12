from medseg.pipeline.job import job
from medseg.inference.device import check_cuda

with job(snakemake):
    check_cuda()
