# Intensity normalisation (fitted per fold on training cases only) and tiling for training.


rule fit_normalizer:
    input:
        images=lambda w: [  # case-major: all modalities of case 1, then case 2 ...
            f"{RESULTS}/{w.dataset}/preprocess/{c}/reg_{m}.nii.gz"
            for c in plan(w).train_cases(int(w.fold))
            for m in ALL_MODS
        ],
        masks=lambda w: case_files(
            w.dataset, plan(w).train_cases(int(w.fold)), "brain_mask.nii.gz"
        ),
    output:
        model=f"{RESULTS}/{{dataset}}/normalizer_{{fold}}.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/fit_normalizer/{{fold}}.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        cases=lambda w: plan(w).train_cases(int(w.fold)),
        modalities=mods,
        normalize=cfg_section("preprocessing", "normalize"),
        experiment=experiment,
    script:
        "../scripts/fit_normalizer.py"


rule normalize_case:
    input:
        images=[
            f"{RESULTS}/{{dataset}}/preprocess/{{case}}/reg_{m}.nii.gz"
            for m in ALL_MODS
        ],
        mask=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/brain_mask.nii.gz",
        seg=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/reg_seg.nii.gz",
        model=f"{RESULTS}/{{dataset}}/normalizer_{{fold}}.json",
        sheet=sheet,
    output:
        npz=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/norm_{{fold}}.npz",
    log:
        f"{RESULTS}/{{dataset}}/logs/normalize_case/{{case}}_{{fold}}.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        modalities=mods,
        with_labels=lambda w: w.case in plan(w).fold_cases(int(w.fold)),
        normalize=cfg_section("preprocessing", "normalize"),
        experiment=experiment,
    script:
        "../scripts/normalize_case.py"


rule tile_case:
    input:
        npz=f"{RESULTS}/{{dataset}}/preprocess/{{case}}/norm_{{fold}}.npz",
        sheet=sheet,
    output:
        npy=f"{RESULTS}/{{dataset}}/tiles/fold_{{fold}}/{{case}}.npy",
        table=f"{RESULTS}/{{dataset}}/tiles/fold_{{fold}}/{{case}}.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/tile_case/{{case}}_{{fold}}.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        experiment=experiment,
    script:
        "../scripts/tile_case.py"
