# Intensity normalisation (fitted per fold on training cases only) and tiling for training.
# Per case, not per case and fold: either a case's normalisation (held-out cases, every fold's
# in one file) or its tiles (training cases, every fold's channels in one file), so a
# 1,000-case, 5-fold DAG has as many jobs as a 1-fold one. The intensity statistics the
# normalisers are fitted on come from the skull-stripping job (brain_stats.json), or with
# steps.skullstrip off (no such job) from the images, computed by collect_brain_stats itself.


rule collect_brain_stats:
    input:
        unpack(W.stats_inputs),
        sheet=ancient(SHEET),
    output:
        table=W.path("brain_stats"),
    log:
        f"{LOGS}/collect_brain_stats.log",
    conda:
        "../../envs/preprocess.yaml"
    threads: 8  # steps.skullstrip off: reads every training case's images
    params:
        cases=lambda w: W.usable(w).trained_cases(),
        modalities=lambda w: list(W.plan(w).task.modalities),
        experiment=EXPERIMENT,
    script:
        "../scripts/collect_brain_stats.py"


rule fit_normalizer:
    input:
        # one table of every training case's intensity quantiles, not ~1,000 files: each
        # fold's normaliser is an input of every case's normalisation, and Snakemake scans a
        # producer's inputs for each such edge
        table=W.path("brain_stats"),
        sheet=ancient(SHEET),
    output:
        model=W.path("normalizer"),
    log:
        f"{LOGS}/fit_normalizer/{{fold}}.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        cases=lambda w: W.usable(w).train_cases(int(w.fold)),
        modalities=lambda w: list(W.plan(w).task.modalities),
        normalize=lambda w: W.plan(w).recipe.normalize,
        experiment=EXPERIMENT,
    script:
        "../scripts/fit_normalizer.py"


rule gather_normalizers:
    # every fold's normaliser in one file: one input of each case's normalisation, not one per fold
    input:
        W.fold_normalizers,
    output:
        W.path("normalizers"),
    log:
        f"{LOGS}/gather_normalizers.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        experiment=EXPERIMENT,
    script:
        "../scripts/gather_normalizers.py"


rule normalize_case:
    # held-out and unlabelled cases: every fold's normalisation, read by predict_case
    input:
        images=W.stage_dir,
        mask=W.case_mask,
        models=W.path("normalizers"),
    output:
        npz=CASE.norm,
    log:
        f"{LOGS}/normalize_case/{{case}}.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        job=W.case_job,
        stage=lambda w: W.plan(w).recipe.normalize_stage(),
        experiment=EXPERIMENT,
    script:
        "../scripts/normalize_case.py"


rule tile_case:
    # training and validation cases: normalised for every fold and tiled in one job
    input:
        W.case_seg,
        images=W.stage_dir,
        mask=W.case_mask,
        models=W.path("normalizers"),
        sheet=ancient(SHEET),
        task=ancient(TASK),
    output:
        npy=W.path("tiles"),
        table=W.path("tiles").replace(".npy", ".json"),
    log:
        f"{LOGS}/tile_case/{{case}}.log",
    wildcard_constraints:
        dataset=MRI,
    conda:
        "../../envs/preprocess.yaml"
    params:
        job=W.case_job,
        stage=lambda w: W.plan(w).recipe.normalize_stage(),
        experiment=EXPERIMENT,
    script:
        "../scripts/tile_case.py"
