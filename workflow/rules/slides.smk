# Whole-slide images (datasets.<name> with kind: slide): demo slides or a folder of slides + QuPath GeoJSON;
# case sheet with splits by slide, stain target fitted on training slides, class-aware tiles at an
# mpp, the common trainer, stitched prediction (OME-TIFF + GeoJSON), per-slide evaluation and
# results/<name>_<model>.json. Needs common.smk (cfg_section, preflight_inputs, RESULTS).
include: "slides_common.smk"


rule slides_demo:
    input:
        slide_demo_source,
    output:
        manifest=f"{RESULTS}/{{slideset}}/demo/demo.json",
    log:
        f"{RESULTS}/{{slideset}}/logs/slides_demo.log",
    conda:
        "../../envs/wsi.yaml"
    params:
        demo=lambda w: slide_cfg(w, "demo"),
        experiment=SLIDE_EXPERIMENT,
    script:
        "../scripts/slides_demo.py"


rule slides_sheet:
    input:
        slide_source,
    output:
        sheet=SLIDE_SHEET,
        task=SLIDE_TASK,
    log:
        f"{RESULTS}/{{slideset}}/logs/slides_sheet.log",
    conda:
        "../../envs/wsi.yaml"
    params:
        slide_dir=lambda w: SLIDE_PLANS[w.slideset].slide_dir,
        annotation_dir=lambda w: SLIDE_PLANS[w.slideset].annotation_dir,
        classes=lambda w: list(SLIDE_PLANS[w.slideset].classes),
        split=lambda w: slide_cfg(w, "split"),
        mpp=lambda w: config["datasets"][w.slideset].get("mpp"),
        ignore=lambda w: config["datasets"][w.slideset].get("ignore_classes", []),
        experiment=SLIDE_EXPERIMENT,
    script:
        "../scripts/slides_sheet.py"


rule slides_stain:
    input:
        sheet=SLIDE_SHEET,
        files=lambda w: slide_files(w, "train"),
    output:
        stain=SLIDE_STAIN,
    log:
        f"{RESULTS}/{{slideset}}/logs/slides_stain.log",
    conda:
        "../../envs/wsi.yaml"
    params:
        slides=lambda w: [
            slides_usable(w).slides[s] for s in slides_usable(w).ids("train")
        ],
        method=lambda w: slide_cfg(w, "stain").get("method", "macenko"),
        mpp=lambda w: slide_cfg(w, "tiles").get("mpp", 1.0),
        slide_mpp=lambda w: config["datasets"][w.slideset].get("mpp"),
        experiment=SLIDE_EXPERIMENT,
    script:
        "../scripts/slides_stain.py"


rule slides_tiles:
    input:
        slide_source,
        sheet=ancient(SLIDE_SHEET),
        stain=SLIDE_STAIN,
    output:
        npy=f"{RESULTS}/{{slideset}}/tiles/{{slide}}.npy",
        table=f"{RESULTS}/{{slideset}}/tiles/{{slide}}.json",
    log:
        f"{RESULTS}/{{slideset}}/logs/slides_tiles/{{slide}}.log",
    conda:
        "../../envs/wsi.yaml"
    params:
        slide=lambda w: SLIDE_PLANS[w.slideset].slides[w.slide],
        annotation=lambda w: SLIDE_PLANS[w.slideset].annotation(w.slide),
        classes=lambda w: list(SLIDE_PLANS[w.slideset].classes),
        tiles=lambda w: slide_cfg(w, "tiles"),
        slide_mpp=lambda w: config["datasets"][w.slideset].get("mpp"),
        experiment=SLIDE_EXPERIMENT,
    script:
        "../scripts/slides_tiles.py"


rule slides_train:
    input:
        train=lambda w: slide_tiles(w, "train"),
        val=lambda w: slide_tiles(w, "val"),
        sheet=ancient(SLIDE_SHEET),
        task=ancient(SLIDE_TASK),
        preflight=lambda w: preflight_inputs(),
    output:
        model=f"{RESULTS}/{{slideset}}/models/{{model}}/fold_{{fold}}/model.pt",
        metrics=f"{RESULTS}/{{slideset}}/models/{{model}}/fold_{{fold}}/metrics.csv",
        curves=f"{RESULTS}/{{slideset}}/models/{{model}}/fold_{{fold}}/curves.png",
        summary=f"{RESULTS}/{{slideset}}/models/{{model}}/fold_{{fold}}/summary.json",
    log:
        f"{RESULTS}/{{slideset}}/logs/slides_train/{{model}}_{{fold}}.log",
    benchmark:
        f"{RESULTS}/{{slideset}}/benchmarks/slides_train/{{model}}_{{fold}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        gpu=cfg_section("resources").get("gpu", 0),
        mem_mb=cfg_section("resources").get("train_mem_mb", 8000),
        runtime=cfg_section("resources").get("train_runtime_min", 240),
    params:
        model=lambda w: config["models"][w.model],
        training=lambda w: {
            **cfg_section("training"),
            **slide_cfg(w, "training"),
            "context": 0,
        },
        inference=cfg_section("inference"),
        experiment=SLIDE_EXPERIMENT,
    script:
        "../scripts/train_model.py"


rule slides_model_stain:
    input:
        SLIDE_STAIN,
    output:
        f"{RESULTS}/{{slideset}}/models/{{model}}/fold_{{fold}}/stain.json",
    log:
        f"{RESULTS}/{{slideset}}/logs/slides_model_stain/{{model}}_{{fold}}.log",
    conda:
        "../../envs/wsi.yaml"
    shell:
        "cp {input} {output} 2> {log}"


rule slides_predict:
    input:
        slide_source,
        model=f"{RESULTS}/{{slideset}}/models/{{model}}/fold_0/model.pt",
        stain=f"{RESULTS}/{{slideset}}/models/{{model}}/fold_0/stain.json",
    output:
        tiff=f"{RESULTS}/{{slideset}}/predictions/{{model}}/{{slide}}/probabilities.ome.tif",
        geojson=f"{RESULTS}/{{slideset}}/predictions/{{model}}/{{slide}}/predictions.geojson",
        summary=f"{RESULTS}/{{slideset}}/predictions/{{model}}/{{slide}}/summary.json",
    log:
        f"{RESULTS}/{{slideset}}/logs/slides_predict/{{model}}_{{slide}}.log",
    benchmark:
        f"{RESULTS}/{{slideset}}/benchmarks/slides_predict/{{model}}_{{slide}}.tsv"
    conda:
        "../../envs/wsi.yaml"
    threads: 2
    resources:
        gpu=cfg_section("resources").get("gpu", 0),
    params:
        slide=lambda w: SLIDE_PLANS[w.slideset].slides[w.slide],
        classes=lambda w: list(SLIDE_PLANS[w.slideset].classes),
        predict=lambda w: slide_cfg(w, "predict"),
        mpp=lambda w: slide_cfg(w, "tiles").get("mpp", 1.0),
        slide_mpp=lambda w: config["datasets"][w.slideset].get("mpp"),
        experiment=SLIDE_EXPERIMENT,
    script:
        "../scripts/slides_predict.py"


rule slides_evaluate:
    input:
        slide_source,
        tiff=f"{RESULTS}/{{slideset}}/predictions/{{model}}/{{slide}}/probabilities.ome.tif",
    output:
        json=f"{RESULTS}/{{slideset}}/metrics/{{model}}/{{slide}}.json",
        png=f"{RESULTS}/{{slideset}}/thumbnails/{{model}}/{{slide}}.png",
    log:
        f"{RESULTS}/{{slideset}}/logs/slides_evaluate/{{model}}_{{slide}}.log",
    conda:
        "../../envs/wsi.yaml"
    params:
        slide=lambda w: SLIDE_PLANS[w.slideset].slides[w.slide],
        annotation=lambda w: SLIDE_PLANS[w.slideset].annotation(w.slide),
        classes=lambda w: list(SLIDE_PLANS[w.slideset].classes),
        evaluation=lambda w: slide_cfg(w, "evaluation"),
        experiment=SLIDE_EXPERIMENT,
    script:
        "../scripts/slides_evaluate.py"


rule slides_aggregate:
    input:
        metrics=lambda w: expand(
            f"{RESULTS}/{w.slideset}/metrics/{w.model}/{{slide}}.json",
            slide=slides_usable(w).ids("test"),
        ),
        thumbnails=lambda w: expand(
            f"{RESULTS}/{w.slideset}/thumbnails/{w.model}/{{slide}}.png",
            slide=slides_usable(w).ids("test"),
        ),
        predicted=lambda w: slide_predictions(w, "predict"),
        model=f"{RESULTS}/{{slideset}}/models/{{model}}/fold_0/model.pt",
        sheet=ancient(SLIDE_SHEET),
    output:
        json=f"{RESULTS}/{{slideset}}_{{model}}.json",
        csv=f"{RESULTS}/{{slideset}}_{{model}}_cases.csv",
        boxplots=f"{RESULTS}/{{slideset}}_{{model}}_boxplots.png",
    log:
        f"{RESULTS}/{{slideset}}/logs/slides_aggregate/{{model}}.log",
    conda:
        "../../envs/wsi.yaml"
    params:
        config=lambda w: {
            "datasets": {w.slideset: config["datasets"][w.slideset]},
            "models": {w.model: config["models"][w.model]},
        },
        experiment=SLIDE_EXPERIMENT,
    script:
        "../scripts/slides_aggregate.py"
