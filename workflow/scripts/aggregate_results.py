from medseg import tracking
from medseg.cohort.sheet import read_case_sheet
from medseg.evaluate.report import write_results
from medseg.jobs import job

with job(snakemake) as p:
    out, inp = snakemake.output, snakemake.input
    sheet = read_case_sheet(inp.sheet)
    files = {c: (sheet[c][p["reference"]], sheet[c]["seg"], pred) for c, pred in zip(p["cases"], inp.predictions)}
    write_results(inp.metrics, out.json, out.csv, out.boxplots, config=p["config"], seeds=p["seeds"],
                  inputs=[*inp.models, *inp.metrics], rule=snakemake.rule, wildcards=dict(snakemake.wildcards.items()),
                  montage_png=out.montage, case_files=files, excluded=p["excluded"])
    for f in (out.json, out.csv, out.boxplots, out.montage):
        tracking.log_artifact(f)
