# Inference on held-out cases: fold ensemble in atlas space, labels back on the native grid.


rule predict_case:
    input:
        norm=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/norm.npz",
        models=lambda w: [
            f"{RESULTS}/{w.dataset}/models/{w.model}/fold_{k}/model.pt"
            for k in plan(w).folds()
        ],
        atlas_grid=lambda w: f"{RESULTS}/{w.dataset}/preprocess/{w.case}/reg_{ref_mod(w)}.nii.gz",
        transform=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/tfm_atlas.tfm",
        warp=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/warp_atlas.nii.gz",
        sheet=SHEET,
    output:
        labels=f"{RESULTS}/{{dataset}}/predictions/{{model}}/{{case}}.nii.gz",
    log:
        f"{RESULTS}/{{dataset}}/logs/predict_case/{{model}}_{{case}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/predict_case/{{model}}_{{case}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        gpu=cfg_section("resources").get("gpu", 0),
    params:
        reference=ref_mod,
        inference=cfg_section("inference"),
        experiment=EXPERIMENT,
    script:
        "../scripts/predict_case.py"
