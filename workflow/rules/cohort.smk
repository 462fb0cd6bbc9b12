# The demo cohort (when a dataset's source is "demo") and the validated case sheet.


rule synth_cohort:
    output:
        manifest=f"{RESULTS}/{{dataset}}/demo/cohort.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/synth_cohort.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/synth_cohort.tsv"
    params:
        demo=lambda w: dataset_cfg(w).get("demo", {}),
        experiment=experiment,
    threads: 2
    conda:
        "../../envs/preprocess.yaml"
    script:
        "../scripts/synth_cohort.py"


def sheet_inputs(wildcards):
    p = plan(wildcards)
    return [f"{RESULTS}/{wildcards.dataset}/demo/cohort.json"] if p.is_demo else []


rule case_sheet:
    input:
        sheet_inputs,
    output:
        tsv=f"{RESULTS}/{{dataset}}/cases.tsv",
    log:
        f"{RESULTS}/{{dataset}}/logs/case_sheet.log",
    params:
        root=lambda w: plan(w).root,
        layout=lambda w: plan(w).layout,
        cases=lambda w: list(plan(w).cases),
        splits=lambda w: plan(w).splits,
        modalities=lambda w: list(plan(w).modalities),
        convention=lambda w: str(dataset_cfg(w).get("convention", "auto")),
        experiment=experiment,
    conda:
        "../../envs/preprocess.yaml"
    script:
        "../scripts/case_sheet.py"
