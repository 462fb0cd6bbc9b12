from pathlib import Path

from medseg import tracking
from medseg.jobs import job
from medseg.wsi.evaluate import write_slide_results
from medseg.wsi.plan import sheet_problems

with job(snakemake) as p:
    out, inp = snakemake.output, snakemake.input
    predicted = {Path(t).parent.name: str(Path(t).parent) for t in inp.predicted}  # unannotated slides
    res = write_slide_results(inp.metrics, out.json, out.csv, out.boxplots, excluded=sheet_problems(inp.sheet),
                              predicted_only=predicted, config=p["config"], inputs=[inp.model, *inp.metrics],
                              rule=snakemake.rule, wildcards=dict(snakemake.wildcards.items()))
    # mean test scores per class, named as the MRI branch names them: comparable in the MLflow UI
    scores = {f"{metric}_{name}": s[metric]["mean"] for name, s in res["labels"].items()
              for metric in ("dice", "iou") if metric in s}
    scores["pixel_accuracy"] = res["slides"]["pixel_accuracy"]["mean"]
    tracking.log_metrics({**scores, "n_cases": res["n_cases"]})
    tracking.log_invocation_metrics({f"{snakemake.wildcards.model}/{k}": v for k, v in scores.items()})
    for f in (out.json, out.csv, out.boxplots):
        tracking.log_artifact(f)
