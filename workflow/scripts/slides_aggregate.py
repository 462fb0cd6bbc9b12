from pathlib import Path

from medseg.jobs import job
from medseg.wsi.evaluate import write_slide_results
from medseg.wsi.plan import sheet_problems

with job(snakemake) as p:
    out, inp = snakemake.output, snakemake.input
    predicted = {Path(t).parent.name: str(Path(t).parent) for t in inp.predicted}  # unannotated slides
    write_slide_results(inp.metrics, out.json, out.csv, out.boxplots, excluded=sheet_problems(inp.sheet),
                        predicted_only=predicted, config=p["config"], inputs=[inp.model, *inp.metrics], rule=snakemake.rule,
                        wildcards=dict(snakemake.wildcards.items()))
