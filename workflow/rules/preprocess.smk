# Per-case MRI preprocessing: N4 -> registration (modalities to reference, reference to atlas) -> skull stripping.


rule prepare_atlas:
    output:
        [
            f"{RESULTS}/atlas/icbm152_{{spacing}}mm/{n}.nii.gz"
            for n in ("head", "brain", "mask")
        ],
    log:
        f"{RESULTS}/atlas/icbm152_{{spacing}}mm.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        experiment="medseg-atlas",
    script:
        "../scripts/prepare_atlas.py"


rule n4_correct:
    input:
        raw_inputs,
        sheet=SHEET,
    output:
        images=[
            f"{RESULTS}/{{dataset}}/preprocess/{{case}}/n4_{m}.nii.gz"
            for m in ALL_MODS
        ],
        fields=[
            f"{RESULTS}/{{dataset}}/preprocess/{{case}}/bias_{m}.nii.gz"
            for m in ALL_MODS
        ],
        qc=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/n4_qc.json",
        qc_png=report(
            f"{RESULTS}/{{dataset}}/preprocess/{{case}}/qc_n4.png",
            category="QC",
            subcategory="N4",
        ),
    log:
        f"{RESULTS}/{{dataset}}/logs/n4_correct/{{case}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/n4_correct/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        modalities=ALL_MODS,
        enabled=lambda w: step_on(w, "n4"),
        n4=cfg_section("preprocessing", "n4"),
        # the demo cohort's applied bias fields, scored in n4_qc.json (absent for real data)
        truth_dir=f"{RESULTS}/{{dataset}}/demo/truth/{{case}}",
        experiment=EXPERIMENT,
    script:
        "../scripts/n4_correct.py"


rule register_atlas:
    input:
        sheet=SHEET,
        images=[
            f"{RESULTS}/{{dataset}}/preprocess/{{case}}/n4_{m}.nii.gz"
            for m in ALL_MODS
        ],
        atlas=f"{ATLAS_DIR}/head.nii.gz",
    output:
        images=[
            f"{RESULTS}/{{dataset}}/preprocess/{{case}}/reg_{m}.nii.gz"
            for m in ALL_MODS
        ],
        seg=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/reg_seg.nii.gz",
        transforms=[
            f"{RESULTS}/{{dataset}}/preprocess/{{case}}/tfm_{m}.tfm" for m in ALL_MODS
        ],
        atlas_transform=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/tfm_atlas.tfm",
        warp=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/warp_atlas.nii.gz",
        qc=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/register_qc.json",
        qc_png=report(
            f"{RESULTS}/{{dataset}}/preprocess/{{case}}/qc_register.png",
            category="QC",
            subcategory="registration",
        ),
    log:
        f"{RESULTS}/{{dataset}}/logs/register_atlas/{{case}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/register_atlas/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        modalities=ALL_MODS,
        reference=lambda w: plan(w).reference,
        enabled=lambda w: step_on(w, "register"),
        skull_stripped=lambda w: not step_on(w, "skullstrip"),
        register=cfg_section("preprocessing", "register"),
        experiment=EXPERIMENT,
    script:
        "../scripts/register_atlas.py"


rule skullstrip_brain:
    # the brain mask, and the intensity quantiles inside it (fitting the normalisers reads those)
    input:
        image=skullstrip_input,
        atlas=skullstrip_atlas,
        images=case_images,
    output:
        mask=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/brain_mask.nii.gz",
        stats=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/brain_stats.json",
        qc=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/skullstrip_qc.json",
        qc_png=report(
            f"{RESULTS}/{{dataset}}/preprocess/{{case}}/qc_mask.png",
            category="QC",
            subcategory="brain mask",
        ),
    log:
        f"{RESULTS}/{{dataset}}/logs/skullstrip_brain/{{case}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/skullstrip_brain/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        skullstrip=lambda w: (
            {**cfg_section("preprocessing", "skullstrip"), "atlas_dir": ATLAS_DIR}
            if step_on(w, "skullstrip")
            else {"method": "nonzero"}
        ),
        modalities=ALL_MODS,
        experiment=EXPERIMENT,
    script:
        "../scripts/skullstrip_brain.py"
