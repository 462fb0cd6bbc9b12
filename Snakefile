# medseg: medical image segmentation, from raw scans (or slides) to results/{dataset}_{model}.json
from snakemake.utils import min_version

min_version("9.17")  # 9.10-9.16 run jobs beyond --cores (snakemake#3913)


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/slides.smk"


rule all:
    default_target: True
    input:
        DEFAULT_TARGETS,


record_signatures(
    workflow.rules
)  # Snakemake then skips inspect.signature per call (a light DAG)
