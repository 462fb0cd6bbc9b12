# Training one model per fold (resumable: a restarted job continues from fold_K/checkpoint.pt
# when it was trained from the same config and inputs), for MRI and slide datasets alike.


rule train_model:
    input:
        train=lambda w: W.fold_tiles(w, "train"),
        val=lambda w: W.fold_tiles(w, "val"),
        sheet=lambda w: ancient(W.sheet(w)),
        task=ancient(TASK),
        preflight=lambda w: W.preflight_inputs(),
    output:
        model=W.fold_file("model.pt"),
        metrics=W.fold_file("metrics.csv"),
        curves=report(
            W.fold_file("curves.png"),
            caption="../report/curves.rst",
            category="2. Training",
            subcategory="{dataset}",
            labels={"model": "{model}", "fold": "{fold}"},
        ),
        summary=W.fold_file("summary.json"),
    log:
        f"{LOGS}/train_model/{{model}}_{{fold}}.log",
    benchmark:
        f"{BENCH}/train_model/{{model}}_{{fold}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        gpu=config["resources"]["gpu"],
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime_min"],
    params:
        run=lambda w: W.plan(w).run(w.model),
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
