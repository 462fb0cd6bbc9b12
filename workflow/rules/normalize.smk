# Intensity normalisation (fitted per fold on training cases only) and tiling for training.
# Per case, not per case and fold: either a case's normalisation (held-out cases, every fold's
# in one file) or its tiles (training cases, every fold's channels in one file), so a
# 1,000-case, 5-fold DAG has as many jobs as a 1-fold one. The intensity statistics the
# normalisers are fitted on come from the skull-stripping job (brain_stats.json), or with
# steps.skullstrip off (no such job) from the images, computed by collect_brain_stats itself.


rule collect_brain_stats:
    input:
        unpack(stats_inputs),
        sheet=ancient(SHEET),
    output:
        table=f"{RESULTS}/{{dataset}}/brain_stats.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/collect_brain_stats.log",
    conda:
        "../../envs/preprocess.yaml"
    threads: 8  # steps.skullstrip off: reads every training case's images
    params:
        cases=lambda w: usable(w).trained_cases(),
        modalities=modalities,
        experiment=EXPERIMENT,
    script:
        "../scripts/collect_brain_stats.py"


rule fit_normalizer:
    input:
        # one table of every training case's intensity quantiles, not ~1,000 files: each
        # fold's normaliser is an input of every case's normalisation, and Snakemake scans a
        # producer's inputs for each such edge
        table=f"{RESULTS}/{{dataset}}/brain_stats.json",
        sheet=ancient(SHEET),
    output:
        model=f"{RESULTS}/{{dataset}}/normalizer_{{fold}}.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/fit_normalizer/{{fold}}.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        cases=lambda w: usable(w).train_cases(int(w.fold)),
        modalities=modalities,
        normalize=normalize_settings,
        experiment=EXPERIMENT,
    script:
        "../scripts/fit_normalizer.py"


rule gather_normalizers:
    # every fold's normaliser in one file: one input of each case's normalisation, not one per fold
    input:
        fold_normalizers,
    output:
        f"{RESULTS}/{{dataset}}/normalizers.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/gather_normalizers.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        experiment=EXPERIMENT,
    script:
        "../scripts/gather_normalizers.py"


rule normalize_case:
    # held-out and unlabelled cases: every fold's normalisation, read by predict_case
    input:
        images=stage_dir,
        mask=case_mask,
        models=f"{RESULTS}/{{dataset}}/normalizers.json",
    output:
        npz=f"{CASE_DIR}/norm.npz",
    log:
        f"{RESULTS}/{{dataset}}/logs/normalize_case/{{case}}.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        modalities=modalities,
        normalize=normalize_settings,
        experiment=EXPERIMENT,
    script:
        "../scripts/normalize_case.py"


rule tile_case:
    # training and validation cases: normalised for every fold and tiled in one job
    input:
        images=stage_dir,
        mask=case_mask,
        seg=case_seg,
        models=f"{RESULTS}/{{dataset}}/normalizers.json",
        sheet=ancient(SHEET),
        task=ancient(TASK),
    output:
        npy=f"{RESULTS}/{{dataset}}/tiles/{{case}}.npy",
        table=f"{RESULTS}/{{dataset}}/tiles/{{case}}.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/tile_case/{{case}}.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        modalities=modalities,
        register=lambda w: step_on(w, "register"),
        seg_file=lambda w: plan(w).raw(w.case, "seg"),
        normalize=normalize_settings,
        experiment=EXPERIMENT,
    script:
        "../scripts/tile_case.py"
