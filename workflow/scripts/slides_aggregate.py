from medseg.jobs import job
from medseg.wsi.evaluate import write_slide_results
from medseg.wsi.plan import sheet_problems

with job(snakemake) as p:
    out, inp = snakemake.output, snakemake.input
    write_slide_results(inp.metrics, out.json, out.csv, out.boxplots, excluded=sheet_problems(inp.sheet),
                        config=p["config"], inputs=[inp.model, *inp.metrics], rule=snakemake.rule,
                        wildcards=dict(snakemake.wildcards.items()))
