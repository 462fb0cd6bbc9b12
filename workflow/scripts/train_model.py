from pathlib import Path

from medseg import tracking
from medseg.cohort.sheet import read_task
from medseg.config import from_mapping
from medseg.data import tile_pairs
from medseg.jobs import job
from medseg.models import model_config_from_mapping
from medseg.train import TrainConfig, train
from medseg.volume_inference import InferenceConfig

with job(snakemake) as p:
    inp = snakemake.input
    tcfg = from_mapping(TrainConfig, {"threads": snakemake.threads, **p["training"]}, "training.")
    summary = train(tile_pairs(inp.train), tile_pairs(inp.val), Path(snakemake.output.model).parent,
                    model_config_from_mapping(p["model"], f"models.{snakemake.wildcards.model}."), tcfg,
                    from_mapping(InferenceConfig, p["inference"], "inference."), read_task(inp.task),
                    fold=int(snakemake.wildcards.fold))
    tracking.log_metrics({"best_val_dice": summary["best"]["dice_mean"], "data_wait_fraction": summary["data_wait_fraction"]})
    for f in (snakemake.output.curves, snakemake.output.metrics, snakemake.output.model):
        tracking.log_artifact(f)
