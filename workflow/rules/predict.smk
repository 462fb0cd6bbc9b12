# Inference on held-out cases: fold ensemble in atlas space (native with steps.register off),
# labels back on the native grid.


rule predict_case:
    input:
        unpack(atlas_transforms),
        norm=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/norm.npz",
        models=lambda w: [
            f"{RESULTS}/{w.dataset}/models/{w.model}/fold_{k}/model.pt"
            for k in plan(w).folds()
        ],
        atlas_grid=lambda w: case_image(w, ref_mod(w)),
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
