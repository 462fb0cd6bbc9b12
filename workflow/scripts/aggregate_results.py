from medseg import tracking
from medseg.cohort.sheet import read_task
from medseg.evaluate.report import write_results
from medseg.jobs import job

with job(snakemake) as p:
    out, inp, w = snakemake.output, snakemake.input, snakemake.wildcards
    files = {c: (p["images"][c], p["segs"][c], pred) for c, pred in zip(p["cases"], inp.predictions)}
    res = write_results(inp.metrics, out.json, out.csv, out.boxplots, config=p["config"], seeds=p["seeds"],
                        inputs=[*inp.models, *inp.metrics], rule=snakemake.rule, wildcards=dict(w.items()),
                        montage_png=out.montage, case_files=files, excluded=p["excluded"],
                        predicted_only=dict(zip(p["unlabelled"], inp.unlabelled)),
                        dataset=w.dataset, model=w.model, model_files=list(inp.models), sheet=inp.sheet,
                        out_html=out.summary, task=read_task(inp.task), modality=p["reference"],
                        qc_jsons=list(inp.qc))
    # mean test scores per region (or label), named alike in every run: comparable in the MLflow UI
    section = "regions" if res.get("regions") else "labels"
    scores = {f"{metric}_{name}": s[metric]["mean"] for name, s in res[section].items()
              for metric in ("dice", "hd95") if metric in s}
    if section == "regions" and res.get("labels"):
        scores |= {f"{metric}_label_{name}": s[metric]["mean"] for name, s in res["labels"].items()
                   for metric in ("dice", "hd95") if metric in s}
    tracking.log_metrics({**scores, "n_cases": res["n_cases"]})
    tracking.log_invocation_metrics({f"{w.model}/{k}": v for k, v in scores.items()})
    tracking.set_tags({"model.arch": res["model"]["arch"], "model.encoder": res["model"]["encoder"],
                       "model.n_parameters": res["model"]["n_parameters"]})
    for f in (out.json, out.csv, out.summary, out.boxplots, out.montage):
        tracking.log_artifact(f)
