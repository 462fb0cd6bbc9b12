# Per-case metrics on held-out cases (native space, BraTS regions) and the aggregate results JSON.


rule evaluate_case:
    input:
        pred=f"{RESULTS}/{{dataset}}/predictions/{{model}}/{{case}}.nii.gz",
        sheet=SHEET,
    output:
        json=f"{RESULTS}/{{dataset}}/metrics/{{model}}/{{case}}.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate_case/{{model}}_{{case}}.log",
    conda:
        "../../envs/evaluate.yaml"
    params:
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
        models=lambda w: [
            f"{RESULTS}/{w.dataset}/models/{w.model}/fold_{k}/model.pt"
            for k in plan(w).folds()
        ],
        sheet=SHEET,
    output:
        json=report(f"{RESULTS}/{{dataset}}_{{model}}.json", category="Results"),
        csv=f"{RESULTS}/{{dataset}}_{{model}}_cases.csv",
        boxplots=report(
            f"{RESULTS}/{{dataset}}_{{model}}_boxplots.png", category="Results"
        ),
        montage=report(
            f"{RESULTS}/{{dataset}}_{{model}}_montage.png", category="Results"
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
        excluded=lambda w: dict(usable(w).excluded),
        reference=lambda w: plan(w).reference,
        experiment=EXPERIMENT,
    script:
        "../scripts/aggregate_results.py"
