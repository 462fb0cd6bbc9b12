# Per-case MRI preprocessing: N4 (+ resampling, generic recipe) -> registration (modalities to
# reference, reference to atlas) -> skull stripping. A case's images of one stage live in one
# folder (n4/, reg/: <modality>.nii.gz), so one rule serves tasks of any modalities.


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
    # the first stage to read the scans: writes n4/<mod>.nii.gz and n4/bias_<mod>.nii.gz
    input:
        raw_images,
        sheet=ancient(SHEET),
    output:
        images=directory(f"{CASE_DIR}/n4"),
        qc=f"{CASE_DIR}/n4_qc.json",
        qc_png=report(
            f"{CASE_DIR}/qc_n4.png",
            caption="../report/qc_n4.rst",
            category="3. Quality control",
            subcategory="{dataset}: {case}",
            labels={"step": "1. N4 bias field"},
        ),
    log:
        f"{RESULTS}/{{dataset}}/logs/n4_correct/{{case}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/n4_correct/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        modalities=modalities,
        files=lambda w: {m: plan(w).raw(w.case, m) for m in plan(w).modalities},
        channels=lambda w: dict(plan(w).files[w.case].channels),
        spacing_mm=lambda w: dataset_cfg(w).get("spacing_mm"),
        # without registration the working space is the native grid in one orientation (LPS),
        # so 2-D/2.5-D slices of every case run along the same anatomical axis
        orientation=lambda w: None if step_on(w, "register") else "LPS",
        enabled=lambda w: step_on(w, "n4"),
        n4=n4_settings,
        # the demo cohort's applied bias fields, scored in n4_qc.json (absent for real data)
        truth_dir=f"{RESULTS}/{{dataset}}/demo/truth/{{case}}",
        experiment=EXPERIMENT,
    script:
        "../scripts/n4_correct.py"


rule register_atlas:
    input:
        raw_seg,
        sheet=ancient(SHEET),
        images=f"{CASE_DIR}/n4",
        atlas=f"{ATLAS_DIR}/head.nii.gz",
    output:
        images=directory(f"{CASE_DIR}/reg"),
        atlas_transform=f"{CASE_DIR}/tfm_atlas.tfm",
        warp=f"{CASE_DIR}/warp_atlas.nii.gz",
        qc=f"{CASE_DIR}/register_qc.json",
        qc_png=report(
            f"{CASE_DIR}/qc_register.png",
            caption="../report/qc_register.rst",
            category="3. Quality control",
            subcategory="{dataset}: {case}",
            labels={"step": "2. atlas registration"},
        ),
    log:
        f"{RESULTS}/{{dataset}}/logs/register_atlas/{{case}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/register_atlas/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        modalities=modalities,
        seg=lambda w: plan(w).files[w.case].seg,
        reference=ref_mod,
        enabled=lambda w: step_on(w, "register"),
        skull_stripped=lambda w: not step_on(w, "skullstrip"),
        register=cfg_section("preprocessing", "register"),
        experiment=EXPERIMENT,
    script:
        "../scripts/register_atlas.py"


rule skullstrip_brain:
    # the brain mask, and the intensity quantiles inside it (fitting the normalisers reads those)
    input:
        images=stage_dir,
        atlas=skullstrip_atlas,
        atlas_transform=lambda w: atlas_to_native(w, "tfm"),
        atlas_warp=lambda w: atlas_to_native(w, "warp"),
    output:
        mask=f"{CASE_DIR}/brain_mask.nii.gz",
        stats=f"{CASE_DIR}/brain_stats.json",
        qc=f"{CASE_DIR}/skullstrip_qc.json",
        qc_png=report(
            f"{CASE_DIR}/qc_mask.png",
            caption="../report/qc_mask.rst",
            category="3. Quality control",
            subcategory="{dataset}: {case}",
            labels={"step": "3. brain mask"},
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
        modality=skullstrip_modality,
        modalities=modalities,
        experiment=EXPERIMENT,
    script:
        "../scripts/skullstrip_brain.py"
