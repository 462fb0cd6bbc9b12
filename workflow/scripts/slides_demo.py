from pathlib import Path

from medseg.pipeline.job import job
from medseg.wsi.demo import DemoConfig, make_demo_dataset, resolve_cmu

with job(snakemake) as p:
    demo = dict(p["demo"])
    cmu = resolve_cmu(demo.pop("cmu", "auto"))
    make_demo_dataset(Path(snakemake.output.manifest).parent, DemoConfig(**demo), cmu)
