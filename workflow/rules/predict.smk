# Inference on held-out and unlabelled cases: fold ensemble in the working space (atlas space, or
# native / resampled with steps.register off), labels back on the native grid in the task's values.


rule predict_case:
    input:
        unpack(W.registration),
        W.raw_images,
        norm=CASE.norm,
        models=W.fold_models,
        images=W.stage_dir,
        sheet=ancient(SHEET),
        task=ancient(TASK),
    output:
        labels=W.path("prediction"),
    log:
        f"{LOGS}/predict_case/{{model}}_{{case}}.log",
    benchmark:
        f"{BENCH}/predict_case/{{model}}_{{case}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1  # on the CPU, cases side by side beat threads in one case (the demo's 4: 31 -> 17 s on 2 cores)
    resources:
        gpu=config["resources"]["gpu"],
    params:
        job=W.case_job,
        stage=lambda w: W.plan(w).recipe.native_stage(),
        inference=lambda w: W.plan(w).run(w.model).inference,
        experiment=EXPERIMENT,
    script:
        "../scripts/predict_case.py"


rule export_bundle:
    # weights of every fold + the plan + fitted normalisers: `medseg predict` segments raw scans
    # of a new patient with it, no workflow needed
    input:
        models=W.fold_models,
        normalizers=W.path("normalizers"),
        plan=PLAN,
    output:
        bundle=directory(W.path("bundle")),
    log:
        f"{LOGS}/export_bundle/{{model}}.log",
    conda:
        "../../envs/train.yaml"
    params:
        experiment=EXPERIMENT,
    script:
        "../scripts/export_bundle.py"
