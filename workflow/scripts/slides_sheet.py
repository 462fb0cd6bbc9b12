from medseg.io import write_json
from medseg.jobs import job
from medseg.tasks import Task
from medseg.wsi.sheet import build_slide_sheet, write_sheet

with job(snakemake) as p:
    split = p["split"]
    rows = build_slide_sheet(p["slide_dir"], p["annotation_dir"], p["classes"],
                             test_fraction=split.get("test_fraction", 0.3), val_fraction=split.get("val_fraction", 0.15),
                             seed=split.get("seed", 0), mpp_override=p["mpp"], ignore=p["ignore"])
    write_sheet(rows, snakemake.output.sheet)
    task = Task(snakemake.wildcards.slideset, ("r", "g", "b"), {c: i for i, c in enumerate(p["classes"], start=1)},
                recipe="generic")
    write_json(task.to_dict(), snakemake.output.task)
