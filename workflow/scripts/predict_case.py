import torch

from medseg.cohort.sheet import case_row, read_task
from medseg.config import from_mapping
from medseg.jobs import job
from medseg.predict import predict_case
from medseg.volume_inference import InferenceConfig

with job(snakemake) as p:
    torch.set_num_threads(snakemake.threads)
    inp, case = snakemake.input, snakemake.wildcards.case
    case_row(inp.sheet, case)
    predict_case(case, inp.norm, inp.models, f"{inp.images}/{p['reference']}.nii.gz", inp.get("transform"),
                 p["native"], read_task(inp.task), snakemake.output.labels,
                 from_mapping(InferenceConfig, p["inference"], "inference."), warp=inp.get("warp"),
                 native_channel=p["native_channel"])
