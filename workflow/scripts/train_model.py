from pathlib import Path

from medseg import tracking
from medseg.cohort.sheet import read_task
from medseg.data import tile_pairs
from medseg.jobs import job
from medseg.train import configs_for_model, train
from medseg.train_launch import launch_torchrun

with job(snakemake) as p:
    inp, key = snakemake.input, snakemake.wildcards.model
    out_dir, fold = Path(snakemake.output.model).parent, int(snakemake.wildcards.fold)
    gpus = int(snakemake.resources.get("gpu", 0) or 0)
    if gpus > 1:  # one process per GPU under torchrun (DistributedDataParallel); rank 0 writes the outputs
        summary = launch_torchrun(gpus, inp.train, inp.val, out_dir, p["model"], p["training"], p["inference"],
                                  inp.task, fold, key=key, threads=snakemake.threads)
    else:
        mcfg, tcfg, icfg = configs_for_model(p["model"], p["training"], p["inference"], key, threads=snakemake.threads)
        summary = train(tile_pairs(inp.train), tile_pairs(inp.val), out_dir, mcfg, tcfg, icfg, read_task(inp.task),
                        fold=fold)
    tracking.log_metrics({"best_val_dice": summary["best"]["dice_mean"], "data_wait_fraction": summary["data_wait_fraction"]})
    for f in (snakemake.output.curves, snakemake.output.metrics, snakemake.output.model):
        tracking.log_artifact(f)
