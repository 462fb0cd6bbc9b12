from medseg import tracking
from medseg.evaluate.report import write_results
from medseg.jobs import job

with job(snakemake) as p:
    out = snakemake.output
    write_results(snakemake.input.metrics, out.json, out.csv, out.boxplots, config=p["config"], seeds=p["seeds"],
                  inputs=[*snakemake.input.models, *snakemake.input.metrics], rule=snakemake.rule,
                  wildcards=dict(snakemake.wildcards.items()))
    for f in (out.json, out.csv, out.boxplots):
        tracking.log_artifact(f)
