# Training one model per fold (resumable: a restarted job continues from fold_K/checkpoint.pt
# when it was trained from the same config and inputs).


rule train_model:
    input:
        train=lambda w: tiles(w, usable(w).train_cases(int(w.fold))),
        val=lambda w: tiles(w, usable(w).val_cases(int(w.fold))),
        sheet=ancient(SHEET),
        task=ancient(TASK),
        preflight=lambda w: preflight_inputs(),
    output:
        model=f"{RESULTS}/{{dataset}}/models/{{model}}/fold_{{fold}}/model.pt",
        metrics=f"{RESULTS}/{{dataset}}/models/{{model}}/fold_{{fold}}/metrics.csv",
        curves=report(
            f"{RESULTS}/{{dataset}}/models/{{model}}/fold_{{fold}}/curves.png",
            caption="../report/curves.rst",
            category="Training",
            labels={"model": "{model}", "fold": "{fold}"},
        ),
        summary=f"{RESULTS}/{{dataset}}/models/{{model}}/fold_{{fold}}/summary.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/train_model/{{model}}_{{fold}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/train_model/{{model}}_{{fold}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        gpu=cfg_section("resources").get("gpu", 0),
        mem_mb=cfg_section("resources").get("train_mem_mb", 8000),
        runtime=cfg_section("resources").get("train_runtime_min", 240),
    params:
        model=lambda w: config["models"][w.model],
        training=cfg_section("training"),
        inference=cfg_section("inference"),
        experiment=EXPERIMENT,
    script:
        "../scripts/train_model.py"


rule preflight_gpu:
    output:
        touch(f"{RESULTS}/preflight/cuda_ok"),
    log:
        f"{RESULTS}/preflight/cuda.log",
    conda:
        "../../envs/train.yaml"
    resources:
        gpu=1,
    params:
        experiment="medseg-preflight",
    script:
        "../scripts/preflight_gpu.py"
