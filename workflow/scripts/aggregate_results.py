from medseg import tracking
from medseg.evaluate.report import write_results
from medseg.jobs import job

with job(snakemake) as p:
    out, inp = snakemake.output, snakemake.input
    files = {c: (p["images"][c], p["segs"][c], pred) for c, pred in zip(p["cases"], inp.predictions)}
    write_results(inp.metrics, out.json, out.csv, out.boxplots, config=p["config"], seeds=p["seeds"],
                  inputs=[*inp.models, *inp.metrics], rule=snakemake.rule, wildcards=dict(snakemake.wildcards.items()),
                  montage_png=out.montage, case_files=files, excluded=p["excluded"],
                  predicted_only=dict(zip(p["unlabelled"], inp.unlabelled)))
    for f in (out.json, out.csv, out.boxplots, out.montage):
        tracking.log_artifact(f)
