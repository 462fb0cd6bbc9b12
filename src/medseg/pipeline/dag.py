"""The Python side of the workflow's DAG: every dataset's listing and plan, file patterns, input functions.

One object, :class:`Workflow`, built once when the Snakefile loads, serves every rule of both
dataset kinds (MRI and slides: one name family, one ``{dataset}`` wildcard): the listing of a
dataset's cases (:class:`~medseg.cohort.listing.CaseListing`,
:class:`~medseg.wsi.listing.SlideListing`; folder listings only, no image reads), its resolved
plan (:class:`~medseg.plan.resolved.Plan`), the file patterns of the rules (:data:`PATTERNS`,
the case folder of :class:`~medseg.preprocess.case.CaseFolder`) and the input functions. The
``.smk`` files stay declarations; this module is imported light (no torch, no SimpleITK).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg.cohort.listing import CaseListing, list_cases
from medseg.cohort.sheet import sheet_problems
from medseg.config import datasets_of_kind
from medseg.plan.resolved import Plan, resolve_plan, resolve_slide_plan
from medseg.preprocess.case import CaseFolder, CaseJob
from medseg.tracking.fingerprint import stat_signature
from medseg.wsi.listing import SlideListing, list_slides
from medseg.wsi.listing import sheet_problems as slide_sheet_problems

#: every file pattern of the rules, under ``{results}`` (one place for the names)
PATTERNS = {
    "sheet": "{results}/{dataset}/cases.tsv",
    "slide_sheet": "{results}/{dataset}/slides.tsv",
    "task": "{results}/{dataset}/task.json",
    "plan": "{results}/{dataset}/plan.json",
    "case_dir": "{results}/{dataset}/preprocess/{case}",
    "demo_manifest": "{results}/{dataset}/demo/cohort.json",
    "slide_demo_manifest": "{results}/{dataset}/demo/demo.json",
    "brain_stats": "{results}/{dataset}/brain_stats.json",
    "normalizer": "{results}/{dataset}/normalizer_{fold}.json",
    "normalizers": "{results}/{dataset}/normalizers.json",
    "stain": "{results}/{dataset}/stain.json",
    "tiles": "{results}/{dataset}/tiles/{case}.npy",
    "fold_dir": "{results}/{dataset}/models/{model}/fold_{fold}",
    "prediction": "{results}/{dataset}/predictions/{model}/{case}.nii.gz",
    "slide_prediction": "{results}/{dataset}/predictions/{model}/{case}/probabilities.ome.tif",
    "metrics": "{results}/{dataset}/metrics/{model}/{case}.json",
    "bundle": "{results}/{dataset}/bundles/{model}",
    "results": "{results}/{dataset}_{model}.json",
    "truth_dir": "{results}/{dataset}/demo/truth/{case}",
    "atlas_dir": "{results}/atlas/icbm152_{spacing}mm",
    "logs": "{results}/{dataset}/logs",
    "benchmarks": "{results}/{dataset}/benchmarks",
}


def export_package_path() -> None:
    """Put this package's source folder on ``PYTHONPATH`` so every job imports the same medseg
    (also inside conda envs and on cluster nodes, where Snakemake re-reads the workflow)."""
    src = str(Path(__file__).resolve().parents[2])
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([src, *parts])


def _alternatives(values) -> str:
    import re

    return "|".join(re.escape(v) for v in values) or "NO_MATCH"


class Workflow:
    """Listings, plans and input functions of every dataset of a (validated) config."""

    def __init__(self, config: Mapping[str, Any], results: str = "results") -> None:
        self.config, self.results = config, results
        self.kinds: dict[str, str] = {}
        self.listings: dict[str, CaseListing | SlideListing] = {}
        self.plans: dict[str, Plan] = {}
        for name, ds in datasets_of_kind(config, "mri").items():
            listing = list_cases(name, dict(ds), results)
            self.kinds[name], self.listings[name] = "mri", listing
            self.plans[name] = resolve_plan(config, name, listing.task, native_grid=listing.native_grid)
        for name, ds in datasets_of_kind(config, "slide").items():
            self.kinds[name], self.listings[name] = "slide", list_slides(name, ds, results)
            self.plans[name] = resolve_slide_plan(config, name)

    @staticmethod
    def finish_network_check(check) -> None:
        """At exit (a dry run has no onstart): wait for the background network check and, if the
        config is bad, say why and exit with status 1."""
        try:
            check.wait()
        except ValueError as e:
            print(f"invalid config: {e}", file=sys.stderr)
            sys.stderr.flush()
            os._exit(1)

    # ---- names --------------------------------------------------------------------------------
    def path(self, name: str, **wildcards: str) -> str:
        """:data:`PATTERNS` ``name`` under this results folder; wildcards not given stay ``{...}``."""
        keep = {k: "{" + k + "}" for k in ("dataset", "case", "model", "fold", "spacing")}
        return PATTERNS[name].format(**{**keep, "results": self.results, **wildcards})

    def fold_file(self, name: str, **wildcards: str) -> str:
        """A file of a fold's folder (``model.pt``, ``metrics.csv`` ...)."""
        return f"{self.path('fold_dir', **wildcards)}/{name}"

    def case_folder(self, dataset: str = "{dataset}", case: str = "{case}") -> CaseFolder:
        return CaseFolder(self.path("case_dir", dataset=dataset, case=case))

    def names(self, kind: str) -> list[str]:
        return [d for d, k in self.kinds.items() if k == kind]

    def constraint(self, kind: str | None = None) -> str:
        """A wildcard constraint matching the datasets (of one kind)."""
        return _alternatives(self.kinds if kind is None else self.names(kind))

    def constraint_models(self) -> str:
        return _alternatives(self.config.get("models") or {})

    @property
    def atlas_dir(self) -> str:
        spacing = float((self.config.get("preprocessing") or {}).get("register", {}).get("atlas_spacing_mm", 2.0))
        return self.path("atlas_dir", spacing=f"{spacing:g}")

    def experiment(self) -> str:
        """The MLflow experiment of a dataset's jobs: a template, not a function (Snakemake inspects
        every callable param of every job: seconds in a 1,000-case DAG)."""
        from medseg.tracking.config import TrackingConfig

        prefix = TrackingConfig.from_config(self.config).experiment_prefix
        return prefix.replace("{", "{{").replace("}", "}}") + "{dataset}"

    # ---- what a job is given ------------------------------------------------------------------
    def dataset_cfg(self, w) -> Mapping[str, Any]:
        return self.config["datasets"][w.dataset]

    def plan(self, w) -> Plan:
        return self.plans[w.dataset]

    def listing(self, w):
        return self.listings[w.dataset]

    def usable(self, w):
        """The listing minus what the sheet found unusable (``bad_cases: skip``; slides always).

        For rules that list cases (training, normalisers, aggregation); each must take the sheet as
        an input, so that Snakemake re-evaluates it when the checkpoint has written the sheet.
        Before that every listed case is in: a dry run shows the whole DAG.
        """
        listing, sheet = self.listing(w), self.sheet(w)
        if self.kinds[w.dataset] == "slide":
            return listing.without(slide_sheet_problems(sheet))
        if self.dataset_cfg(w).get("bad_cases", "skip") != "skip":
            return listing
        return listing.without(sheet_problems(sheet))

    def sheet(self, w) -> str:
        return self.path("slide_sheet" if self.kinds[w.dataset] == "slide" else "sheet", dataset=w.dataset)

    def case_job(self, w, case: str | None = None) -> CaseJob:
        """The :class:`CaseJob` of the case of ``w`` (its source files and its folder)."""
        listing, case = self.listing(w), case or w.case
        files = listing.files[case]
        truth = self.path("truth_dir", dataset=w.dataset, case=case) if listing.is_demo else None
        return CaseJob(case, dict(files.images), self.case_folder(w.dataset, case), files.seg, dict(files.channels),
                       truth)

    def step_on(self, w, step: str) -> bool:
        return getattr(self.plan(w).recipe.steps, step)

    # ---- input functions ----------------------------------------------------------------------
    def default_targets(self) -> list[str]:
        """What ``snakemake`` with no target builds: ``default_datasets`` (all when null) x
        ``default_models`` (all when null)."""
        models = self.config.get("default_models") or list(self.config["models"])
        datasets = self.config.get("default_datasets") or list(self.kinds)
        for key, chosen, valid in (("default_models", models, self.config["models"]),
                                   ("default_datasets", datasets, self.kinds)):
            if unknown := sorted(set(chosen) - set(valid)):
                raise ValueError(f"{key} names {unknown}, which are not keys of {key.split('_')[1]} {sorted(valid)}")
        return [self.path("results", dataset=d, model=m) for d in datasets for m in models]

    def existing_results(self) -> list[str]:
        """The results files that exist, of every dataset and model of the config (what a report
        without a target shows: whatever was run, the demo, a subset or a tiny run)."""
        return [p for d in self.kinds for m in (self.config.get("models") or {})
                if os.path.exists(p := self.path("results", dataset=d, model=m))]

    def report_contents(self, targets: list[str]) -> dict[str, list[str]]:
        """``{"datasets": [...], "models": [...]}`` of the results files ``targets`` (the report's landing page)."""
        pairs = [(d, m) for d in self.kinds for m in (self.config.get("models") or {})
                 if self.path("results", dataset=d, model=m) in targets]
        return {"datasets": list(dict.fromkeys(d for d, _ in pairs)), "models": list(dict.fromkeys(m for _, m in pairs)),
                "results": [f"{d}: {m}" for d, m in pairs]}

    def raw_images(self, w) -> list[str]:
        """The case's source scans (real data), so that a changed scan reruns the jobs that read it;
        the demo's files come from its generator (whose manifest is the sheet's input)."""
        listing = self.listing(w)
        return [] if listing.is_demo else list(dict.fromkeys(listing.files[w.case].images.values()))

    def raw_seg(self, w) -> list[str]:
        listing = self.listing(w)
        seg = listing.files[w.case].seg
        return [] if listing.is_demo or seg is None else [seg]

    def sheet_inputs(self, w) -> list[str]:
        return [self.path("demo_manifest", dataset=w.dataset)] if self.listing(w).is_demo else []

    def sheet_sources(self, w) -> str:
        """Path, size and mtime digest of every source file of a real dataset: a fixed, replaced, added
        or removed file reruns the case sheet. A parameter, not inputs: see
        :func:`medseg.tracking.fingerprint.stat_signature`."""
        listing = self.listing(w)
        return "" if listing.is_demo else stat_signature([f for c in listing.files for f in listing.raw_files(c)])

    def stage_dir(self, w, case: str | None = None) -> str:
        """The case's images as the stages after registration read them: ``reg/`` or ``n4/``."""
        return self.case_folder(w.dataset, case or w.case).stage_dir(self.plan(w).recipe.stage)

    def case_mask(self, w) -> list[str]:
        """The skull-stripping job's brain mask; none with ``steps.skullstrip`` off (no such job)."""
        return [self.case_folder(w.dataset, w.case).brain_mask] if self.step_on(w, "skullstrip") else []

    def registration(self, w) -> dict[str, str]:
        """The atlas -> native transform and warp of a registered case (none with ``steps.register`` off)."""
        if not self.step_on(w, "register"):
            return {}
        folder = self.case_folder(w.dataset, w.case)
        return {"transform": folder.atlas_transform, "warp": folder.atlas_warp}

    def case_seg(self, w) -> list[str]:
        """The label map the tiles read: the register job's folder, or the source file (none for the demo)."""
        if self.step_on(w, "register"):
            return [self.stage_dir(w)]
        return self.raw_seg(w)

    def skullstrip_atlas(self, w) -> list[str]:
        """The prepared atlas, if this dataset's skull stripping uses it."""
        recipe = self.plan(w).recipe
        return [f"{self.atlas_dir}/head.nii.gz"] if recipe.steps.skullstrip and recipe.skullstrip.method == "atlas" else []

    def stats_inputs(self, w) -> dict[str, list[str]]:
        """What the normalisers' intensity table is gathered from: each training case's
        ``brain_stats.json``, or with ``steps.skullstrip`` off its image folder."""
        cases = self.usable(w).trained_cases()
        if self.step_on(w, "skullstrip"):
            return {"stats": [self.case_folder(w.dataset, c).brain_stats for c in cases]}
        return {"images": [self.stage_dir(w, c) for c in cases]}

    def qc_files(self, w) -> list[str]:
        """The QC JSONs whose gates can warn (registration, skull stripping) of every usable case."""
        folders = [self.case_folder(w.dataset, c) for c in self.usable(w).cases]
        names = [n for n, step in (("register_qc", "register"), ("skullstrip_qc", "skullstrip")) if self.step_on(w, step)]
        return [getattr(f, n) for n in names for f in folders]

    def tiles(self, w, cases) -> list[str]:
        """Tile arrays of ``cases``; each one's slice table (.json) comes from the same job and is read
        beside it: declaring it too would double the largest fan-in of the DAG."""
        return [self.path("tiles", dataset=w.dataset, case=c) for c in cases]

    def fold_tiles(self, w, split: str) -> list[str]:
        """The tile arrays a fold trains (``train``) or validates (``val``) on, of either dataset kind."""
        if self.kinds[w.dataset] == "slide":
            return self.slide_tiles(w, split)
        usable = self.usable(w)
        return self.tiles(w, usable.train_cases(int(w.fold)) if split == "train" else usable.val_cases(int(w.fold)))

    def fold_normalizers(self, w) -> list[str]:
        return [self.path("normalizer", dataset=w.dataset, fold=str(k)) for k in self.listing(w).folds()]

    def fold_models(self, w) -> list[str]:
        return [self.fold_file("model.pt", dataset=w.dataset, model=w.model, fold=str(k))
                for k in self.listing(w).folds()]

    def predictions(self, w, cases) -> list[str]:
        pattern = "slide_prediction" if self.kinds[w.dataset] == "slide" else "prediction"
        return [self.path(pattern, dataset=w.dataset, model=w.model, case=c) for c in cases]

    def preflight_inputs(self) -> list[str]:
        """Training asked explicitly for CUDA: check it first, in a small job that fails fast."""
        device = (self.config.get("training") or {}).get("device")
        return [f"{self.results}/preflight/cuda_ok"] if device == "cuda" else []

    def results_request(self, w):
        """What the aggregation of ``w.dataset`` x ``w.model`` knows before its inputs: the config and
        seeds, the held-out cases' native reference scans and label maps (the montage), the cases
        left out; the script adds the files (:class:`medseg.evaluate.report.ResultsRequest`)."""
        from medseg.evaluate.report import ResultsRequest

        listing, usable, ds = self.listing(w), self.usable(w), self.dataset_cfg(w)
        ref = self.plan(w).recipe.reference
        seeds = {"split": (ds.get("split") or {}).get("seed", 0), "demo": (ds.get("demo") or {}).get("seed"),
                 "training": (self.config.get("training") or {}).get("seed", 0)}
        refs = {c: ((listing.raw(c, ref), listing.channel(c, ref)), listing.raw(c, "seg")) for c in usable.test_cases()}
        return ResultsRequest(w.dataset, w.model, config=self.config, seeds=seeds, references=refs,
                              unlabelled=tuple(usable.unlabelled_cases()), excluded=dict(usable.excluded),
                              modality=ref)

    # ---- slides -------------------------------------------------------------------------------
    def slide_demo_source(self, w) -> list[str]:
        """The CMU-1 file the slide demo's skin texture comes from, if any (its arrival rebuilds the demo)."""
        from medseg.wsi.demo import default_cmu_paths

        setting = str((self.dataset_cfg(w).get("demo") or {}).get("cmu", "auto"))
        if setting == "none":
            return []
        if setting != "auto":
            return [setting]
        return [str(p) for p in default_cmu_paths() if p.is_file()][:1]

    def slide_source(self, w) -> list[str]:
        """The demo's manifest (its files come from slides_demo), else nothing (real files are read)."""
        return [self.path("slide_demo_manifest", dataset=w.dataset)] if self.listing(w).is_demo else []

    def slide_files(self, w, split: str) -> list[str]:
        """Files of the usable slides of a split (the demo's manifest stands for its slides)."""
        p = self.usable(w)
        return self.slide_source(w) if p.is_demo else [p.slides[s] for s in p.ids(split)]

    def slide_tiles(self, w, split: str) -> list[str]:
        ids = self.usable(w).ids(split)
        model = self.fold_file("model.pt", dataset=w.dataset, model=w.model, fold=w.fold)
        if split == "train" and not ids and not os.path.exists(model):
            raise ValueError(
                f"datasets.{w.dataset}: no usable annotated slide to train on (annotations/<slide id>.geojson; "
                f"slides without one are only predicted); to predict with a model trained elsewhere, put its "
                f"model.pt and stain.json in {Path(model).parent}/")
        return self.tiles(w, ids)

    def invocation_datasets(self, targets) -> list[str]:
        """The datasets an invocation works on: those its target files belong to (all for rule names)."""
        found = [d for d in self.kinds
                 if any(str(t).startswith((f"{self.results}/{d}_", f"{self.results}/{d}/")) for t in targets)]
        return found or list(self.kinds)


def record_signatures(rules) -> int:
    """Record the parameters of every input and params function of ``rules`` once, where Snakemake looks for
    them first (``snakemake.common.overwrite_function_params``' attribute). Otherwise Snakemake calls
    ``inspect.signature`` at every call of a function: about 29,000 calls on a 1,000-case DAG, a tenth of a dry
    run (``python benchmarks/bench_dag.py --profile``). A bound method (the :class:`Workflow`'s input functions)
    holds it on its function, with the bound signature: those functions are only ever handed to Snakemake
    bound. Returns how many functions were recorded."""
    import inspect

    from snakemake.common import FUNC_OVERWRITE_PARAMS_ATTR

    n = 0
    for rule in rules:
        for item in (*rule.input, *rule.params):
            func = getattr(item, "callable", item)
            if isinstance(func, str) or not callable(func) or hasattr(func, FUNC_OVERWRITE_PARAMS_ATTR):
                continue
            try:
                params = inspect.signature(func).parameters
                setattr(getattr(func, "__func__", func), FUNC_OVERWRITE_PARAMS_ATTR, params)
                n += 1
            except (TypeError, ValueError, AttributeError):  # a builtin or a callable object: left to Snakemake
                pass
    return n
