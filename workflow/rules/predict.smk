# Inference on held-out and unlabelled cases: fold ensemble in the working space (atlas space, or
# native / resampled with steps.register off), labels back on the native grid in the task's values.


rule predict_case:
    input:
        unpack(atlas_transforms),
        raw_images,
        norm=f"{CASE_DIR}/norm.npz",
        models=fold_models,
        images=stage_dir,
        sheet=ancient(SHEET),
        task=ancient(TASK),
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
        native=lambda w: plan(w).raw(w.case, ref_mod(w)),
        native_channel=lambda w: plan(w).channel(w.case, ref_mod(w)),
        inference=cfg_section("inference"),
        experiment=EXPERIMENT,
    script:
        "../scripts/predict_case.py"


rule export_bundle:
    # weights of every fold + task + fitted normalisers + preprocessing settings: `medseg predict`
    # segments raw scans of a new patient with it, no workflow needed
    input:
        models=fold_models,
        normalizers=f"{RESULTS}/{{dataset}}/normalizers.json",
        task=ancient(TASK),
    output:
        bundle=directory(f"{RESULTS}/{{dataset}}/bundles/{{model}}"),
    log:
        f"{RESULTS}/{{dataset}}/logs/export_bundle/{{model}}.log",
    conda:
        "../../envs/train.yaml"
    params:
        settings=lambda w: {
            "reference": ref_mod(w),
            "steps": {s: step_on(w, s) for s in ("n4", "register", "skullstrip")},
            "spacing_mm": dataset_cfg(w).get("spacing_mm"),
            "orientation": None if step_on(w, "register") else "LPS",
            "n4": n4_settings(w),
            "register": cfg_section("preprocessing", "register"),
            "skullstrip": (
                cfg_section("preprocessing", "skullstrip")
                if step_on(w, "skullstrip")
                else {"method": "nonzero"}
            ),
            "skullstrip_modality": skullstrip_modality(w),
            "normalize": normalize_settings(w),
            "inference": cfg_section("inference"),
        },
        experiment=EXPERIMENT,
    script:
        "../scripts/export_bundle.py"
