from medseg import tracking
from medseg.cohort.sheet import case_row
from medseg.evaluate import evaluate_case
from medseg.io import write_json
from medseg.jobs import job

with job(snakemake) as p:
    case = snakemake.wildcards.case
    row = case_row(snakemake.input.sheet, case)
    result = evaluate_case(snakemake.input.pred, row["seg"], case_id=case, convention=row["convention"], **p["evaluation"])
    write_json(result, snakemake.output.json)
    tracking.log_metrics({f"{r}.{m}": v for r, d in result["regions"].items() for m, v in d.items() if isinstance(v, float)})
