# The demo cohort (when a dataset's source is "demo") and the validated case sheet + resolved task.


rule synth_cohort:
    output:
        manifest=f"{RESULTS}/{{dataset}}/demo/cohort.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/synth_cohort.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/synth_cohort.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 2
    params:
        demo=lambda w: dataset_cfg(w).get("demo", {}),
        experiment=EXPERIMENT,
    script:
        "../scripts/synth_cohort.py"


# A checkpoint: once the sheet is written, Snakemake re-evaluates the jobs that read it, and with
# bad_cases: skip those that list cases (training, normalisers, aggregation) drop the ones the
# sheet found unusable. Before it exists every planned case is in the DAG, so a dry run of a new
# dataset still shows every job. Every source file is an input: fixing one reruns the sheet.
checkpoint case_sheet:
    input:
        sheet_inputs,
    output:
        tsv=f"{RESULTS}/{{dataset}}/cases.tsv",
        task=f"{RESULTS}/{{dataset}}/task.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/case_sheet.log",
    conda:
        "../../envs/preprocess.yaml"
    threads: 8  # reading every scan of a 1,000-case dataset: ~1.75 CPU-s per BraTS case
    params:
        dataset=lambda w: dataset_cfg(w),
        sources=sheet_sources,
        validate=lambda w: dataset_cfg(w).get("validate", "full"),
        register=lambda w: step_on(w, "register"),
        bad_cases=lambda w: dataset_cfg(w).get("bad_cases", "skip"),
        experiment=EXPERIMENT,
    script:
        "../scripts/case_sheet.py"
