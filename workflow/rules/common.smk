# Validation, every dataset's listing and plan (medseg.pipeline.dag.Workflow), wildcard constraints.
import os
import sys

# the package of this workflow, importable here and in every job (also in conda envs, on cluster
# nodes and when this workflow is a module of another one, whose basedir is not ours)
sys.path.insert(
    0, os.path.normpath(os.path.join(workflow.current_basedir, "..", "..", "src"))
)


from medseg.pipeline.dag import Workflow, export_package_path, record_signatures

export_package_path()
from medseg.plan.check import fill_defaults, start_network_check, validate_config

validate_config(config)  # an unknown or bad key anywhere fails here, named by its path
fill_defaults(
    config
)  # the schema's defaults, which are the config dataclasses' (one place)

RESULTS = "results"
W = Workflow(
    config, RESULTS
)  # every dataset (MRI and slides): listing, plan, input functions
# networks, encoders, patch sizes (imports torch and timm): in a second process while the DAG is
# built; waited for before the first job (tracking.smk's onstart) or when a dry run exits
NETWORK_CHECK = (
    start_network_check(config, W.plans, os.path.abspath(".snakemake/medseg/checked"))
    if workflow.is_main_process  # once, not again in every job of a cluster run
    else None
)
if NETWORK_CHECK is not None:
    import atexit

    atexit.register(W.finish_network_check, NETWORK_CHECK)
EXPERIMENT = W.experiment()  # a template: the MLflow experiment of a dataset's jobs
CASE = (
    W.case_folder()
)  # a case's preprocessing files, with {dataset} and {case} wildcards
SHEET = W.path("sheet")
TASK = W.path("task")
PLAN = W.path("plan")
LOGS = W.path("logs")
BENCH = W.path("benchmarks")
MRI = W.constraint("mri")
SLIDES = W.constraint("slide")
# `snakemake --report` with no target reports what was run (the demo, a subset, a tiny run), and
# its landing page names exactly that (config key report_contents, read by workflow/report/workflow.rst)
REPORTING = "--report" in sys.argv
DEFAULT_TARGETS = W.existing_results() if REPORTING else W.default_targets()
if REPORTING:  # no job runs: the results' config blocks never see this key
    config["report_contents"] = W.report_contents(DEFAULT_TARGETS)


wildcard_constraints:
    dataset=W.constraint(),
    model=W.constraint_models(),
    case=r"[^/]+",  # case ids are validated (no separators); an alternation of 1,000 ids slows every match
    fold=r"\d+",
    spacing=r"[0-9.]+",
