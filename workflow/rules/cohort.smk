# The demo cohort (when a dataset's source is "demo"), the validated case sheet + resolved task, the plan.


rule synth_cohort:
    output:
        manifest=W.path("demo_manifest"),
    log:
        f"{LOGS}/synth_cohort.log",
    benchmark:
        f"{BENCH}/synth_cohort.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 2
    params:
        demo=lambda w: W.dataset_cfg(w).get("demo", {}),
        experiment=EXPERIMENT,
    script:
        "../scripts/synth_cohort.py"


# A checkpoint: once the sheet is written, Snakemake re-evaluates the jobs that read it, and with
# bad_cases: skip those that list cases (training, normalisers, aggregation) drop the ones the
# sheet found unusable. Before it exists every listed case is in the DAG, so a dry run of a new
# dataset still shows every job. The source files' digest is a param: fixing one reruns the sheet.
checkpoint case_sheet:
    input:
        W.sheet_inputs,
    output:
        tsv=SHEET,
        task=TASK,
    log:
        f"{LOGS}/case_sheet.log",
    wildcard_constraints:
        dataset=MRI,
    conda:
        "../../envs/preprocess.yaml"
    threads: 8  # reading every scan of a 1,000-case dataset: ~1.75 CPU-s per BraTS case
    params:
        dataset=W.dataset_cfg,
        sources=W.sheet_sources,
        validate=lambda w: W.dataset_cfg(w).get("validate", "full"),
        register=lambda w: W.step_on(w, "register"),
        bad_cases=lambda w: W.dataset_cfg(w).get("bad_cases", "skip"),
        experiment=EXPERIMENT,
    script:
        "../scripts/case_sheet.py"


rule write_plan:
    # the dataset's resolved plan (task as the case sheet resolved it, recipe, every model's run):
    # what the bundle carries and the report shows; rules take their params from the same object
    input:
        task=ancient(TASK),
    output:
        plan=report(
            PLAN,
            caption="../report/plan.rst",
            category="4. Plan",
            subcategory="{dataset}",
            labels={"file": "plan.json (recipe, every model's run)"},
        ),
    log:
        f"{LOGS}/write_plan.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        plan=W.plan,
        experiment=EXPERIMENT,
    script:
        "../scripts/write_plan.py"
