# Validation, dataset plans (tasks, case files, splits), wildcard constraints, generic input functions.
import os
import sys

from snakemake.utils import validate

# the package, importable here and in every job (also in conda envs and on cluster nodes)
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from medseg.jobs import export_package_path

export_package_path()

from medseg.cohort.plan import dataset_plan
from medseg.cohort.sheet import sheet_problems
from medseg.config import datasets_of_kind
from medseg.fingerprint import stat_signature
from medseg.config_check import check_config, validate_config

validate_config(config)  # an unknown or bad key anywhere fails here, named by its path
validate(config, schema="../schemas/config.schema.yaml")  # fills the defaults

RESULTS = "results"
PLANS = {
    name: dataset_plan(name, ds, RESULTS)
    for name, ds in datasets_of_kind(config, "mri").items()
}
if workflow.is_main_process:  # once, not again in every job of a cluster run
    check_config(
        config, PLANS
    )  # unknown keys, encoders, losses: fail now, not hours later


def _alternatives(values):
    import re

    return "|".join(re.escape(v) for v in values) or "NO_MATCH"


wildcard_constraints:
    dataset=_alternatives(PLANS),
    model=_alternatives(config["models"]),
    case=r"[^/]+",  # case ids are validated (no separators); an alternation of 1,000 ids slows every match
    fold=r"\d+",
    spacing=r"[0-9.]+",


def plan(wildcards):
    """Every case of the dataset (config exclusions and unusable folders aside)."""
    return PLANS[wildcards.dataset]


def usable(wildcards):
    """plan() minus the cases the case sheet found unusable (datasets.<name>.bad_cases: skip).

    For rules that list cases (training, normalisers, aggregation); each must take the sheet as
    an input, so that Snakemake re-evaluates it when the checkpoint has written the sheet.
    Before that every planned case is listed: a dry run shows the whole DAG.
    """
    p = plan(wildcards)
    if dataset_cfg(wildcards).get("bad_cases", "skip") != "skip":
        return p
    return p.without(sheet_problems(SHEET.format(dataset=wildcards.dataset)))


def all_results():
    """What `snakemake` with no target builds: every dataset (MRI and slide) x default_models (all
    models if null)."""
    models = config.get("default_models") or list(config["models"])
    unknown = sorted(set(models) - set(config["models"]))
    if unknown:
        raise ValueError(
            f"default_models names {unknown}, which are not keys of models {sorted(config['models'])}"
        )
    return expand(
        f"{RESULTS}/{{dataset}}_{{model}}.json",
        dataset=[*PLANS, *SLIDE_PLANS],
        model=models,
    )


def model_inference(wildcards):
    """inference, updated with models.<model>.inference (e.g. a 3-D net's window or blending)."""
    return {
        **cfg_section("inference"),
        **(config["models"][wildcards.model].get("inference") or {}),
    }


def dataset_cfg(wildcards):
    return config["datasets"][wildcards.dataset]


RECIPE_STEPS = {
    "brain": {"n4": True, "register": True, "skullstrip": True},
    "generic": {"n4": True, "register": False, "skullstrip": False},
}


def step_on(wildcards, step):
    """A preprocessing step of the dataset: datasets.<name>.steps, else its recipe's default."""
    default = RECIPE_STEPS[plan(wildcards).task.recipe][step]
    return dataset_cfg(wildcards).get("steps", {}).get(step, default)


def n4_settings(wildcards):
    """preprocessing.n4, with the generic recipe's classic N4 (Otsu mask, no atlas priors)."""
    n4 = dict(cfg_section("preprocessing", "n4"))
    if plan(wildcards).task.recipe == "generic":
        n4.update(mask="otsu", tissue_prior=False)
    return n4


def normalize_settings(wildcards):
    """preprocessing.normalize updated with datasets.<name>.normalize (generic recipe default: z-score)."""
    norm = dict(cfg_section("preprocessing", "normalize"))
    if plan(wildcards).task.recipe == "generic" and "method" not in dataset_cfg(
        wildcards
    ).get("normalize", {}):
        norm["method"] = "zscore"
    norm.update(dataset_cfg(wildcards).get("normalize", {}))
    return norm


# the MLflow experiment of a dataset's jobs; a string template (not a function) because Snakemake
# inspects every callable param of every job: that is seconds in a 1,000-case DAG
EXPERIMENT = (
    config.get("tracking", {})
    .get("experiment_prefix", "medseg-")
    .replace("{", "{{")
    .replace("}", "}}")
    + "{dataset}"
)


SHEET = f"{RESULTS}/{{dataset}}/cases.tsv"
TASK = f"{RESULTS}/{{dataset}}/task.json"
CASE_DIR = f"{RESULTS}/{{dataset}}/preprocess/{{case}}"


def raw_images(wildcards):
    """The case's source scans (real data), so that a changed scan reruns the jobs that read it;
    the demo's files come from synth_cohort (its manifest is the sheet's input)."""
    p = plan(wildcards)
    return (
        []
        if p.is_demo
        else list(dict.fromkeys(p.files[wildcards.case].images.values()))
    )


def raw_seg(wildcards):
    """The case's source label map (real data), for the jobs that read it."""
    p = plan(wildcards)
    seg = p.files[wildcards.case].seg
    return [] if p.is_demo or seg is None else [seg]


def sheet_inputs(wildcards):
    """The demo's manifest; a real dataset's source files are tracked by sheet_sources."""
    p = plan(wildcards)
    return [f"{RESULTS}/{wildcards.dataset}/demo/cohort.json"] if p.is_demo else []


def sheet_sources(wildcards):
    """Path, size and mtime digest of every source file of a real dataset: a fixed, replaced, added
    or removed file reruns the case sheet (which brings a fixed case back). A parameter, not
    inputs: see medseg.fingerprint.stat_signature."""
    p = plan(wildcards)
    return (
        ""
        if p.is_demo
        else stat_signature([f for c in p.files for f in p.raw_files(c)])
    )


def cfg_section(*keys):
    node = config
    for k in keys:
        node = node.get(k, {}) if isinstance(node, dict) else {}
    return node


ATLAS_DIR = "{}/atlas/icbm152_{:g}mm".format(
    RESULTS,
    float(
        config.get("preprocessing", {}).get("register", {}).get("atlas_spacing_mm", 2.0)
    ),
)


def stage_dir(wildcards, case=None):
    """The folder of a case's images as the stages after registration read them: reg/ (atlas space),
    or with steps.register off n4/ itself (native or resampled grid): no register job, no copy.
    """
    stage = "reg" if step_on(wildcards, "register") else "n4"
    return f"{RESULTS}/{wildcards.dataset}/preprocess/{case or wildcards.case}/{stage}"


def case_mask(wildcards):
    """The skull-stripping job's brain mask; none with steps.skullstrip off (no such job: the
    stages take the voxels nonzero in any modality, medseg.preprocess.stages.nonzero_brain).
    """
    if not step_on(wildcards, "skullstrip"):
        return []
    return (
        f"{RESULTS}/{wildcards.dataset}/preprocess/{wildcards.case}/brain_mask.nii.gz"
    )


def stats_inputs(wildcards):
    """What the normalisers' intensity table is gathered from: each training case's
    brain_stats.json, or with steps.skullstrip off its image folder (the table job reads them).
    """
    cases = usable(wildcards).trained_cases()
    if step_on(wildcards, "skullstrip"):
        return {"stats": case_files(wildcards.dataset, cases, "brain_stats.json")}
    return {"images": [stage_dir(wildcards, c) for c in cases]}


def case_seg(wildcards):
    """The label map in the space of stage_dir(): the register job's folder (reg/seg.nii.gz), or
    with steps.register off the source file (none for the demo, generated by synth_cohort: the
    job reads the file the plan names)."""
    if step_on(wildcards, "register"):
        return stage_dir(wildcards)
    p = plan(wildcards)
    return [] if p.is_demo else p.raw(wildcards.case, "seg")


def atlas_transforms(wildcards):
    """The atlas -> native transform and warp predict_case maps labels back with (none with steps.register off)."""
    if not step_on(wildcards, "register"):
        return {}
    d = f"{RESULTS}/{wildcards.dataset}/preprocess/{wildcards.case}"
    return {"transform": f"{d}/tfm_atlas.tfm", "warp": f"{d}/warp_atlas.nii.gz"}


def skullstrip_modality(wildcards):
    mod = cfg_section("preprocessing", "skullstrip").get("modality", "t1")
    return mod if mod in plan(wildcards).modalities else plan(wildcards).reference


def atlas_to_native(wildcards, what):
    """A registered case's atlas -> native transform (what="tfm") or warp (what="warp"): its
    brain-mask QC states the volume in native space; none with steps.register off (native grid).
    """
    if not step_on(wildcards, "register"):
        return []
    name = {"tfm": "tfm_atlas.tfm", "warp": "warp_atlas.nii.gz"}[what]
    return f"{RESULTS}/{wildcards.dataset}/preprocess/{wildcards.case}/{name}"


def skullstrip_atlas(wildcards):
    """The prepared atlas, if this dataset's skull stripping uses it (not with steps.skullstrip off)."""
    method = cfg_section("preprocessing", "skullstrip").get("method", "atlas")
    return (
        [f"{ATLAS_DIR}/head.nii.gz"]
        if step_on(wildcards, "skullstrip") and method == "atlas"
        else []
    )


def qc_files(wildcards):
    """The QC JSONs whose gates can warn (registration, skull stripping) of every usable case:
    the results JSON lists their warnings (qc_action: warn)."""
    names = [
        n
        for n, step in (
            ("register_qc.json", "register"),
            ("skullstrip_qc.json", "skullstrip"),
        )
        if step_on(wildcards, step)
    ]
    cases = usable(wildcards).cases
    return [f for n in names for f in case_files(wildcards.dataset, cases, n)]


def case_files(dataset, cases, pattern):
    return [f"{RESULTS}/{dataset}/preprocess/{c}/{pattern}" for c in cases]


def tiles(wildcards, cases):
    """Tile arrays of ``cases``; each one's slice table (.json) comes from the same job and is
    read beside it: declaring it too would double the largest fan-in of the DAG."""
    return [f"{RESULTS}/{wildcards.dataset}/tiles/{c}.npy" for c in cases]


def fold_normalizers(wildcards):
    return [
        f"{RESULTS}/{wildcards.dataset}/normalizer_{k}.json"
        for k in plan(wildcards).folds()
    ]


def fold_models(wildcards):
    return [
        f"{RESULTS}/{wildcards.dataset}/models/{wildcards.model}/fold_{k}/model.pt"
        for k in plan(wildcards).folds()
    ]


def ref_mod(wildcards):
    return plan(wildcards).reference


def modalities(wildcards):
    return list(plan(wildcards).modalities)


def preflight_inputs():
    """Training asked explicitly for CUDA: check it first, in a small job that fails fast."""
    return (
        [f"{RESULTS}/preflight/cuda_ok"]
        if cfg_section("training").get("device") == "cuda"
        else []
    )


def tracking_on():
    return config.get("tracking", {}).get("enabled", True)


def invocation_datasets(targets):
    """The datasets an invocation works on: those its target files belong to (all for rule names)."""
    found = [
        d
        for d in [*PLANS, *SLIDE_PLANS]
        if any(
            str(t).startswith((f"{RESULTS}/{d}_", f"{RESULTS}/{d}/")) for t in targets
        )
    ]
    return found or [*PLANS, *SLIDE_PLANS]


def start_tracking():
    """One MLflow parent run per dataset of this invocation (named after the targets), nesting the
    jobs' runs; a background thread logs the jobs' spooled records while the workflow runs.
    """
    from medseg import provenance, tracking, tracking_sync

    targets = sorted(str(t) for t in (workflow.dag_settings.targets or ()))
    git = provenance.git_state(workflow.basedir)
    tags = {
        "mlflow.source.name": os.path.join(workflow.basedir, "Snakefile"),
        "mlflow.source.type": "PROJECT",
        "config.hash": provenance.config_hash(config),
        "git.dirty": str(git["dirty"]),
    }
    if git["commit"]:
        tags["mlflow.source.git.commit"] = git["commit"]
    prefix = config.get("tracking", {}).get("experiment_prefix", "medseg-")
    tracking.start_invocation(
        (", ".join(targets) or "all")[:200],
        tags,
        config=config,
        experiments={d: prefix + d for d in invocation_datasets(targets)},
        register_model=config.get("tracking", {}).get("register_model", False),
    )
    tracking_sync.start_background()


def end_tracking(status):
    from medseg import tracking, tracking_sync

    tracking_sync.stop_background()
    tracking.end_invocation(status)
    tracking_sync.sync()


onstart:
    if not tracking_on():
        from medseg import tracking

        tracking.disable()
    else:
        start_tracking()


onsuccess:
    if tracking_on():
        end_tracking("FINISHED")


onerror:
    if tracking_on():
        end_tracking("FAILED")
