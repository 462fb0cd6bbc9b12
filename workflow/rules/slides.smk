# Whole-slide images (datasets.<name> with kind: slide): demo slides or a folder of slides + QuPath
# GeoJSON; a slide sheet with splits by slide, a stain target fitted on training slides,
# class-aware tiles at an mpp, the common trainer (train.smk), stitched prediction (OME-TIFF +
# GeoJSON), per-slide evaluation and results/<name>_<model>.json. Slide ids are the {case} wildcard.


rule slides_demo:
    input:
        W.slide_demo_source,
    output:
        manifest=W.path("slide_demo_manifest"),
    log:
        f"{LOGS}/slides_demo.log",
    conda:
        "../../envs/wsi.yaml"
    params:
        demo=lambda w: W.dataset_cfg(w).get("demo", {}),
        experiment=EXPERIMENT,
    script:
        "../scripts/slides_demo.py"


rule slides_sheet:
    input:
        W.slide_source,
    output:
        sheet=W.path("slide_sheet"),
        task=TASK,
    log:
        f"{LOGS}/slides_sheet.log",
    wildcard_constraints:
        dataset=SLIDES,
    conda:
        "../../envs/wsi.yaml"
    params:
        listing=W.listing,
        recipe=lambda w: W.plan(w).recipe,
        split=lambda w: W.dataset_cfg(w).get("split", {}),
        task=lambda w: W.plan(w).task,
        experiment=EXPERIMENT,
    script:
        "../scripts/slides_sheet.py"


rule slides_stain:
    input:
        sheet=W.path("slide_sheet"),
        files=lambda w: W.slide_files(w, "train"),
    output:
        stain=W.path("stain"),
    log:
        f"{LOGS}/slides_stain.log",
    conda:
        "../../envs/wsi.yaml"
    params:
        slides=lambda w: [W.usable(w).slides[s] for s in W.usable(w).ids("train")],
        recipe=lambda w: W.plan(w).recipe,
        experiment=EXPERIMENT,
    script:
        "../scripts/slides_stain.py"


rule slides_tiles:
    input:
        W.slide_source,
        sheet=ancient(W.path("slide_sheet")),
        stain=W.path("stain"),
    output:
        npy=W.path("tiles"),
        table=W.path("tiles").replace(".npy", ".json"),
    log:
        f"{LOGS}/slides_tiles/{{case}}.log",
    wildcard_constraints:
        dataset=SLIDES,
    conda:
        "../../envs/wsi.yaml"
    params:
        slide=lambda w: W.listing(w).slides[w.case],
        annotation=lambda w: W.listing(w).annotation(w.case),
        recipe=lambda w: W.plan(w).recipe,
        experiment=EXPERIMENT,
    script:
        "../scripts/slides_tiles.py"


rule slides_model_stain:
    input:
        W.path("stain"),
    output:
        W.fold_file("stain.json"),
    log:
        f"{LOGS}/slides_model_stain/{{model}}_{{fold}}.log",
    conda:
        "../../envs/wsi.yaml"
    shell:
        "cp {input} {output} 2> {log}"


rule slides_predict:
    input:
        W.slide_source,
        model=W.fold_file("model.pt", fold="0"),
        stain=W.fold_file("stain.json", fold="0"),
    output:
        tiff=W.path("slide_prediction"),
        geojson=W.path("slide_prediction").replace(
            "probabilities.ome.tif", "predictions.geojson"
        ),
        summary=W.path("slide_prediction").replace(
            "probabilities.ome.tif", "summary.json"
        ),
    log:
        f"{LOGS}/slides_predict/{{model}}_{{case}}.log",
    benchmark:
        f"{BENCH}/slides_predict/{{model}}_{{case}}.tsv"
    conda:
        "../../envs/wsi.yaml"
    threads: 2
    resources:
        gpu=config["resources"]["gpu"],
    params:
        slide=lambda w: W.listing(w).slides[w.case],
        recipe=lambda w: W.plan(w).recipe,
        experiment=EXPERIMENT,
    script:
        "../scripts/slides_predict.py"


rule slides_evaluate:
    input:
        W.slide_source,
        tiff=W.path("slide_prediction"),
    output:
        json=W.path("metrics"),
        png=f"{RESULTS}/{{dataset}}/thumbnails/{{model}}/{{case}}.png",
    log:
        f"{LOGS}/slides_evaluate/{{model}}_{{case}}.log",
    wildcard_constraints:
        dataset=SLIDES,
    conda:
        "../../envs/wsi.yaml"
    params:
        slide=lambda w: W.listing(w).slides[w.case],
        annotation=lambda w: W.listing(w).annotation(w.case),
        recipe=lambda w: W.plan(w).recipe,
        experiment=EXPERIMENT,
    script:
        "../scripts/slides_evaluate.py"


rule slides_aggregate:
    input:
        metrics=lambda w: [
            W.path("metrics", dataset=w.dataset, model=w.model, case=s)
            for s in W.usable(w).ids("test")
        ],
        thumbnails=lambda w: [
            f"{RESULTS}/{w.dataset}/thumbnails/{w.model}/{s}.png"
            for s in W.usable(w).ids("test")
        ],
        predicted=lambda w: W.predictions(w, W.usable(w).ids("predict")),
        model=W.fold_file("model.pt", fold="0"),
        plan=PLAN,
        sheet=ancient(W.path("slide_sheet")),
    output:
        json=W.path("results"),
        csv=W.path("results").replace(".json", "_cases.csv"),
        boxplots=W.path("results").replace(".json", "_boxplots.png"),
    log:
        f"{LOGS}/slides_aggregate/{{model}}.log",
    wildcard_constraints:
        dataset=SLIDES,
    conda:
        "../../envs/wsi.yaml"
    params:
        config=lambda w: {
            "datasets": {w.dataset: config["datasets"][w.dataset]},
            "models": {w.model: config["models"][w.model]},
        },
        experiment=EXPERIMENT,
    script:
        "../scripts/slides_aggregate.py"
