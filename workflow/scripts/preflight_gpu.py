from medseg.jobs import job
from medseg.volume_inference import check_cuda

with job(snakemake):
    check_cuda()
