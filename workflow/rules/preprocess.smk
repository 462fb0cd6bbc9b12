# Per-case MRI preprocessing: N4 (+ reorientation and resampling without registration) ->
# registration (modalities to reference, reference to atlas) -> skull stripping. A case's images
# of one stage live in one folder (n4/, reg/: <modality>.nii.gz), so one rule serves any
# modalities; the case folder's file names are medseg.preprocess.case.CaseFolder's.


rule prepare_atlas:
    output:
        [f"{W.path('atlas_dir')}/{n}.nii.gz" for n in ("head", "brain", "mask")],
    log:
        f"{W.path('atlas_dir')}.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        experiment="medseg-atlas",
    script:
        "../scripts/prepare_atlas.py"


rule n4_correct:
    # the first stage to read the scans: writes n4/<mod>.nii.gz and n4/bias_<mod>.nii.gz
    input:
        W.raw_images,
        sheet=ancient(SHEET),
    output:
        images=directory(CASE.n4),
        qc=CASE.n4_qc,
        qc_png=report(
            CASE.n4_png,
            caption="../report/qc_n4.rst",
            category="3. Quality control",
            subcategory="{dataset}: {case}",
            labels={"step": "1. N4 bias field"},
        ),
    log:
        f"{LOGS}/n4_correct/{{case}}.log",
    benchmark:
        f"{BENCH}/n4_correct/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        job=W.case_job,
        stage=lambda w: W.plan(w).recipe.n4_stage(),
        experiment=EXPERIMENT,
    script:
        "../scripts/n4_correct.py"


rule register_atlas:
    input:
        W.raw_seg,
        sheet=ancient(SHEET),
        images=CASE.n4,
        atlas=f"{W.atlas_dir}/head.nii.gz",
    output:
        images=directory(CASE.reg),
        atlas_transform=CASE.atlas_transform,
        warp=CASE.atlas_warp,
        qc=CASE.register_qc,
        qc_png=report(
            CASE.register_png,
            caption="../report/qc_register.rst",
            category="3. Quality control",
            subcategory="{dataset}: {case}",
            labels={"step": "2. atlas registration"},
        ),
    log:
        f"{LOGS}/register_atlas/{{case}}.log",
    benchmark:
        f"{BENCH}/register_atlas/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        job=W.case_job,
        stage=lambda w: W.plan(w).recipe.register_stage(),
        experiment=EXPERIMENT,
    script:
        "../scripts/register_atlas.py"


rule skullstrip_brain:
    # the brain mask, and the intensity quantiles inside it (fitting the normalisers reads those)
    input:
        unpack(W.registration),
        images=W.stage_dir,
        atlas=W.skullstrip_atlas,
    output:
        mask=CASE.brain_mask,
        stats=CASE.brain_stats,
        qc=CASE.skullstrip_qc,
        qc_png=report(
            CASE.mask_png,
            caption="../report/qc_mask.rst",
            category="3. Quality control",
            subcategory="{dataset}: {case}",
            labels={"step": "3. brain mask"},
        ),
    log:
        f"{LOGS}/skullstrip_brain/{{case}}.log",
    benchmark:
        f"{BENCH}/skullstrip_brain/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        job=W.case_job,
        stage=lambda w: W.plan(w).recipe.skullstrip_stage(),
        atlas_dir=W.atlas_dir,
        experiment=EXPERIMENT,
    script:
        "../scripts/skullstrip_brain.py"
