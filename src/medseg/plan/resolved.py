"""One resolved plan per dataset (nnU-Net's plans, medseg's shape): every decision made once.

From the config and the dataset's task, :func:`resolve_plan` builds one typed, frozen
:class:`Plan`: the task, the preprocessing recipe (:class:`~medseg.plan.recipe.Recipe`, or for
slide datasets :class:`SlideRecipe`) and for each model key its run
(:class:`~medseg.plan.runs.ModelRun`). The workflow writes it as ``results/<dataset>/plan.json``;
every rule takes its params from it, the model bundle carries it (``bundles/<model>/plan.json``),
``medseg predict`` runs its stages, the CLI step commands take their defaults from
:data:`medseg.plan.recipe.DEFAULT` and the dataclasses it is built from.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.cohort.splits import SplitConfig
from medseg.config import build, from_mapping, with_options
from medseg.io import InputError, read_json, write_json
from medseg.plan.recipe import Recipe, resolve_recipe
from medseg.plan.runs import ModelRun, fit_runs, resolve_run
from medseg.tasks.definition import Task
from medseg.wsi.config import SLIDE_SPLIT, SlideEvalConfig, SlideStitchConfig, TileConfig, class_colours

PLAN_VERSION = 1
PLAN_FILE = "plan.json"
SLIDE_MODALITIES = ("r", "g", "b")


@dataclass(frozen=True)
class SlideRecipe:
    """How a slide dataset is tiled, normalised, predicted and scored (``datasets.<name>``, ``kind: slide``).

    Attributes:
        classes: GeoJSON class names in label order (label 1, 2, ...).
        ignore_classes: GeoJSON class names skipped.
        mpp: level-0 microns per pixel of slides without the metadata (None: read from each slide).
        stain: stain normalisation fitted on the training slides: ``macenko``, ``reinhard`` or ``none``.
        tiles: training tiles; predict: the stitched prediction (at ``tiles.mpp``); evaluation: scoring.
        split: test and validation shares and seed of the split by slide (:data:`~medseg.wsi.config.SLIDE_SPLIT`).
        class_colors: class name -> RGB (0-255), the QuPath colour of its predicted polygons; the classes
            it leaves out take the Okabe-Ito palette in class order (:func:`~medseg.wsi.config.class_colours`),
            so the resolved recipe holds a colour for every class.
    """

    classes: tuple[str, ...] = ("skin", "colon")
    ignore_classes: tuple[str, ...] = ()
    mpp: float | None = None
    stain: str = "macenko"
    tiles: TileConfig = field(default_factory=TileConfig)
    predict: SlideStitchConfig = field(default_factory=lambda: SlideStitchConfig(device="auto"))
    evaluation: SlideEvalConfig = field(default_factory=SlideEvalConfig)
    split: SplitConfig = field(default_factory=lambda: SLIDE_SPLIT)
    class_colors: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_colors", class_colours(self.classes, self.class_colors))


@dataclass(frozen=True)
class Plan:
    """Everything decided for one dataset (see the module doc)."""

    dataset: str
    kind: str
    task: Task
    recipe: Recipe | SlideRecipe
    runs: Mapping[str, ModelRun]

    def run(self, key: str) -> ModelRun:
        """The run of model key ``key``; ``ValueError`` listing the keys otherwise."""
        if key not in self.runs:
            raise ValueError(f"model {key!r} is not a key of models: {sorted(self.runs)}")
        return self.runs[key]

    def with_task(self, task: Task) -> Plan:
        """This plan with the task the case sheet resolved (e.g. a BraTS label convention voted by the data)."""
        return dataclasses.replace(self, task=task)

    def to_dict(self) -> dict:
        return {"version": PLAN_VERSION, "dataset": self.dataset, "kind": self.kind, "task": self.task.to_dict(),
                "recipe": dataclasses.asdict(self.recipe),
                "runs": {k: r.to_dict() for k, r in self.runs.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "plan") -> Plan:
        if d.get("version") != PLAN_VERSION:
            raise InputError(f"{source}: plan version {d.get('version')} is not supported (expected {PLAN_VERSION}); "
                             "rebuild it with the workflow of this medseg version")
        kind = d.get("kind", "mri")
        recipe = from_mapping(SlideRecipe if kind == "slide" else Recipe, d["recipe"], "recipe.")
        return cls(d["dataset"], kind, Task.from_dict(d["task"]), recipe,
                   {k: ModelRun.from_dict(r) for k, r in d["runs"].items()})


def resolve_runs(config: Mapping[str, Any], dataset_training: Mapping | None = None,
                 context: int | None = None) -> dict[str, ModelRun]:
    return {key: resolve_run(config, key, dataset_training, context) for key in (config.get("models") or {})}


def resolve_plan(config: Mapping[str, Any], name: str, task: Task, native_grid=None) -> Plan:
    """The plan of MRI dataset ``datasets.<name>`` whose task is ``task``; 3-D windows fitted to its
    working grid (:func:`medseg.plan.runs.fit_runs`; ``native_grid(modality)``: a case's scan grid)."""
    ds = config["datasets"][name]
    recipe = resolve_recipe(config, ds, task.recipe, task.modalities, f"datasets.{name}")
    return Plan(name, "mri", task, recipe, fit_runs(resolve_runs(config), recipe, task, native_grid, name))


def slide_task(name: str, classes: Sequence[str]) -> Task:
    """A slide dataset's task: RGB in, one label per class (softmax), background 0."""
    return Task(name, SLIDE_MODALITIES, {c: i for i, c in enumerate(classes, start=1)}, recipe="generic")


def resolve_slide_plan(config: Mapping[str, Any], name: str) -> Plan:
    """The plan of slide dataset ``datasets.<name>`` (``kind: slide``)."""
    ds = config["datasets"][name]
    path = f"datasets.{name}"
    tiles = build(TileConfig, ds.get("tiles"), f"{path}.tiles")
    predict = build(SlideStitchConfig, {"device": "auto", **(ds.get("predict") or {}), "mpp": tiles.mpp,
                                        "slide_mpp": ds.get("mpp")}, f"{path}.predict")
    split = with_options(SLIDE_SPLIT, ds.get("split") or {}, f"{path}.split")
    try:
        colours = class_colours(ds["classes"], ds.get("class_colors"), f"{path}.class_colors")
    except ValueError as e:
        raise ValueError(f"config {e}") from e
    recipe = SlideRecipe(classes=tuple(ds["classes"]), ignore_classes=tuple(ds.get("ignore_classes") or ()),
                         mpp=ds.get("mpp"), stain=(ds.get("stain") or {}).get("method", SlideRecipe.stain), tiles=tiles,
                         predict=predict, evaluation=build(SlideEvalConfig, ds.get("evaluation"), f"{path}.evaluation"),
                         split=split, class_colors=colours)
    runs = resolve_runs(config, ds.get("training"), context=0)
    return Plan(name, "slide", slide_task(name, recipe.classes), recipe, runs)


def write_plan(plan: Plan, path: str | Path) -> None:
    write_json(plan.to_dict(), path)


def read_plan(path: str | Path) -> Plan:
    """A ``plan.json``; ``InputError`` naming the file when it is missing or not a plan."""
    try:
        return Plan.from_dict(read_json(path), str(path))
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such plan file") from e
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: not a medseg plan ({e})") from e
