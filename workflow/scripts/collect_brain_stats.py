from medseg.jobs import job
from medseg.preprocess.stages import collect_stats, quantiles_from_images, stage_images

with job(snakemake) as p:
    inp, mods = snakemake.input, p["modalities"]
    if inp.get("stats"):
        stats = inp.stats
    else:  # steps.skullstrip off: the image folder of every case
        images = {c: stage_images(d, mods) for c, d in zip(p["cases"], inp.images)}
        stats = quantiles_from_images(images, snakemake.threads)
    collect_stats(stats, snakemake.output.table)
