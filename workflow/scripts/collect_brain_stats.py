from medseg.jobs import job
from medseg.preprocess.stages import collect_stats, quantiles_from_images

with job(snakemake) as p:
    inp, mods = snakemake.input, p["modalities"]
    if inp.get("stats"):
        stats = inp.stats
    else:  # steps.skullstrip off: the images of every case, modality by modality
        paths = list(inp.images)
        images = {c: dict(zip(mods, paths[i * len(mods):(i + 1) * len(mods)])) for i, c in enumerate(p["cases"])}
        stats = quantiles_from_images(images, snakemake.threads)
    collect_stats(stats, snakemake.output.table)
