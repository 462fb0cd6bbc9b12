from medseg import tracking
from medseg.cohort.sheet import case_row, read_task
from medseg.evaluate.case import evaluate_case
from medseg.io import write_json
from medseg.pipeline.job import job

with job(snakemake) as p:
    case = snakemake.wildcards.case
    case_row(snakemake.input.sheet, case)
    task = read_task(snakemake.input.task)
    ev = dict(p["evaluation"])
    ev["lesionwise"] = ev.get("lesionwise", False) and bool(task.preset)  # BraTS lesion-wise scores: BraTS tasks
    result = evaluate_case(snakemake.input.pred, p["seg"], case_id=case, task=task, **ev)
    write_json(result, snakemake.output.json)
    tracking.log_metrics({f"{r}.{m}": v for sec in ("regions", "labels") for r, d in result[sec].items()
                          for m, v in d.items() if isinstance(v, float)})
