from pathlib import Path

from medseg.jobs import job
from medseg.wsi.demo import DemoConfig, fetch_cmu, make_demo_dataset

with job(snakemake) as p:
    demo = dict(p["demo"])
    cmu = demo.pop("cmu", "fetch")
    out = Path(snakemake.output.manifest).parent
    if cmu == "fetch":
        cmu = fetch_cmu(out / "source" / "cmu_small_region.svs")
    elif cmu == "none":
        cmu = None
    make_demo_dataset(out, DemoConfig(**demo), cmu)
