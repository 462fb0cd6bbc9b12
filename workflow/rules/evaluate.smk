# Per-case metrics on held-out labelled cases (native space, the task's regions and labels) and the
# aggregate results JSON (unlabelled cases listed as predicted only).


rule evaluate_case:
    input:
        raw_seg,
        pred=f"{RESULTS}/{{dataset}}/predictions/{{model}}/{{case}}.nii.gz",
        sheet=ancient(SHEET),
        task=ancient(TASK),
    output:
        json=f"{RESULTS}/{{dataset}}/metrics/{{model}}/{{case}}.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate_case/{{model}}_{{case}}.log",
    conda:
        "../../envs/evaluate.yaml"
    params:
        seg=lambda w: plan(w).raw(w.case, "seg"),
        evaluation=cfg_section("evaluation"),
        experiment=EXPERIMENT,
    script:
        "../scripts/evaluate_case.py"


rule aggregate_results:
    input:
        metrics=lambda w: expand(
            f"{RESULTS}/{w.dataset}/metrics/{w.model}/{{case}}.json",
            case=usable(w).test_cases(),
        ),
        predictions=lambda w: expand(
            f"{RESULTS}/{w.dataset}/predictions/{w.model}/{{case}}.nii.gz",
            case=usable(w).test_cases(),
        ),
        unlabelled=lambda w: expand(
            f"{RESULTS}/{w.dataset}/predictions/{w.model}/{{case}}.nii.gz",
            case=usable(w).unlabelled_cases(),
        ),
        models=fold_models,
        qc=qc_files,
        bundle=f"{RESULTS}/{{dataset}}/bundles/{{model}}",
        sheet=ancient(SHEET),
        task=ancient(TASK),
    output:
        json=report(
            f"{RESULTS}/{{dataset}}_{{model}}.json",
            caption="../report/results.rst",
            category="1. Results",
            subcategory="{dataset}: {model}",
            labels={
                "file": "5. results JSON (every number, provenance)",
            },
        ),
        csv=report(
            f"{RESULTS}/{{dataset}}_{{model}}_cases.csv",
            caption="../report/cases.rst",
            category="1. Results",
            subcategory="{dataset}: {model}",
            labels={
                "file": "4. per-case table (CSV)",
            },
        ),
        boxplots=report(
            f"{RESULTS}/{{dataset}}_{{model}}_boxplots.png",
            caption="../report/boxplots.rst",
            category="1. Results",
            subcategory="{dataset}: {model}",
            labels={"file": "2. box plots"},
        ),
        summary=report(
            f"{RESULTS}/{{dataset}}_{{model}}_summary.html",
            caption="../report/summary.rst",
            category="1. Results",
            subcategory="{dataset}: {model}",
            labels={"file": "1. results table"},
        ),
        montage=report(
            f"{RESULTS}/{{dataset}}_{{model}}_montage.png",
            caption="../report/montage.rst",
            category="1. Results",
            subcategory="{dataset}: {model}",
            labels={"file": "3. best, median, worst case"},
        ),
    log:
        f"{RESULTS}/{{dataset}}/logs/aggregate_results/{{model}}.log",
    conda:
        "../../envs/evaluate.yaml"
    params:
        config=config,
        seeds=lambda w: {
            "split": dataset_cfg(w).get("split", {}).get("seed", 0),
            "demo": dataset_cfg(w).get("demo", {}).get("seed"),
            "training": cfg_section("training").get("seed", 0),
        },
        cases=lambda w: usable(w).test_cases(),
        unlabelled=lambda w: usable(w).unlabelled_cases(),
        images=lambda w: {
            c: (plan(w).raw(c, ref_mod(w)), plan(w).channel(c, ref_mod(w)))
            for c in usable(w).test_cases()
        },
        segs=lambda w: {c: plan(w).raw(c, "seg") for c in usable(w).test_cases()},
        reference=ref_mod,
        excluded=lambda w: dict(usable(w).excluded),
        experiment=EXPERIMENT,
    script:
        "../scripts/aggregate_results.py"
