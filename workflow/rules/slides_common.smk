# Slide datasets (datasets.<name> with kind: slide): parse-time plans (slide ids, files, splits by slide),
# wildcard constraints and input functions of workflow/rules/slides.smk.
from medseg.wsi.plan import sheet_problems as slide_sheet_problems
from medseg.wsi.plan import slide_plan
from medseg.wsi.demo import default_cmu_paths

SLIDE_PLANS = {
    name: slide_plan(name, ds, RESULTS)
    for name, ds in datasets_of_kind(config, "slide").items()
}
SLIDE_SHEET = f"{RESULTS}/{{slideset}}/slides.tsv"
SLIDE_TASK = f"{RESULTS}/{{slideset}}/task.json"
SLIDE_STAIN = f"{RESULTS}/{{slideset}}/stain.json"
SLIDE_EXPERIMENT = (
    config.get("tracking", {})
    .get("experiment_prefix", "medseg-")
    .replace("{", "{{")
    .replace("}", "}}")
    + "{slideset}"
)


wildcard_constraints:
    slideset="|".join(SLIDE_PLANS) or "NO_MATCH",
    slide=r"[^/]+",


def slide_cfg(w, *keys):
    node = config["datasets"][w.slideset]
    for k in keys:
        node = node.get(k, {}) if isinstance(node, dict) else {}
    return node


def slide_demo_source(w):
    """The CMU-1 file the demo's skin texture comes from, if any (its arrival, e.g. after
    scripts/fetch_demo_slide.sh, rebuilds the demo); nothing for scikit-image textures.
    """
    setting = str(slide_cfg(w, "demo").get("cmu", "auto"))
    if setting == "none":
        return []
    if setting != "auto":
        return [setting]
    return [str(p) for p in default_cmu_paths() if p.is_file()][:1]


def slides_usable(w):
    """The plan minus the slides the sheet found unusable (rules listing slides take the sheet as input)."""
    return SLIDE_PLANS[w.slideset].without(
        slide_sheet_problems(SLIDE_SHEET.format(slideset=w.slideset))
    )


def slide_source(w):
    """The demo's manifest (its files come from slides_demo), else nothing (real files are read)."""
    p = SLIDE_PLANS[w.slideset]
    return [f"{RESULTS}/{w.slideset}/demo/demo.json"] if p.demo else []


def slide_files(w, split):
    """Files of the usable slides of a split (the demo's manifest stands for its slides)."""
    p = slides_usable(w)
    return slide_source(w) if p.demo else [p.slides[s] for s in p.ids(split)]


def slide_tiles(w, split):
    ids = slides_usable(w).ids(split)
    model = f"{RESULTS}/{w.slideset}/models/{w.model}/fold_{w.fold}/model.pt"
    if split == "train" and not ids and not os.path.exists(model):
        raise ValueError(
            f"datasets.{w.slideset}: no usable annotated slide to train on "
            f"(annotations/<slide id>.geojson; slides without one are only predicted); to "
            f"predict with a model trained elsewhere, put its model.pt and stain.json in {os.path.dirname(model)}/"
        )
    return [f"{RESULTS}/{w.slideset}/tiles/{s}.npy" for s in ids]


def slide_predictions(w, split):
    return [
        f"{RESULTS}/{w.slideset}/predictions/{w.model}/{s}/probabilities.ome.tif"
        for s in slides_usable(w).ids(split)
    ]
