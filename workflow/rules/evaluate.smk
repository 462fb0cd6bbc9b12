# Per-case metrics on held-out labelled cases (native space, the task's regions and labels) and the
# aggregate results JSON (unlabelled cases listed as predicted only).


rule evaluate_case:
    input:
        W.raw_seg,
        pred=W.path("prediction"),
        sheet=ancient(SHEET),
        task=ancient(TASK),
    output:
        json=W.path("metrics"),
    log:
        f"{LOGS}/evaluate_case/{{model}}_{{case}}.log",
    wildcard_constraints:
        dataset=MRI,
    conda:
        "../../envs/evaluate.yaml"
    params:
        seg=lambda w: W.listing(w).raw(w.case, "seg"),
        evaluation=config["evaluation"],
        experiment=EXPERIMENT,
    script:
        "../scripts/evaluate_case.py"


rule aggregate_results:
    input:
        metrics=lambda w: [
            W.path("metrics", dataset=w.dataset, model=w.model, case=c)
            for c in W.usable(w).test_cases()
        ],
        predictions=lambda w: W.predictions(w, W.usable(w).test_cases()),
        unlabelled=lambda w: W.predictions(w, W.usable(w).unlabelled_cases()),
        models=W.fold_models,
        qc=W.qc_files,
        bundle=W.path("bundle"),
        plan=PLAN,
        sheet=ancient(SHEET),
        task=ancient(TASK),
    output:
        json=report(
            W.path("results"),
            caption="../report/results.rst",
            category="1. Results",
            subcategory="{dataset}: {model}",
            labels={"file": "5. results JSON (every number, provenance)"},
        ),
        csv=report(
            W.path("results").replace(".json", "_cases.csv"),
            caption="../report/cases.rst",
            category="1. Results",
            subcategory="{dataset}: {model}",
            labels={"file": "4. per-case table (CSV)"},
        ),
        boxplots=report(
            W.path("results").replace(".json", "_boxplots.png"),
            caption="../report/boxplots.rst",
            category="1. Results",
            subcategory="{dataset}: {model}",
            labels={"file": "2. box plots"},
        ),
        summary=report(
            W.path("results").replace(".json", "_summary.html"),
            caption="../report/summary.rst",
            category="1. Results",
            subcategory="{dataset}: {model}",
            labels={"file": "1. results table"},
        ),
        montage=report(
            W.path("results").replace(".json", "_montage.png"),
            caption="../report/montage.rst",
            category="1. Results",
            subcategory="{dataset}: {model}",
            labels={"file": "3. best, median, worst case"},
        ),
    log:
        f"{LOGS}/aggregate_results/{{model}}.log",
    wildcard_constraints:
        dataset=MRI,
    conda:
        "../../envs/evaluate.yaml"
    params:
        request=W.results_request,
        experiment=EXPERIMENT,
    script:
        "../scripts/aggregate_results.py"
