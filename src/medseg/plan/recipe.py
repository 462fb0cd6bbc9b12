"""A dataset's preprocessing recipe, resolved once: each step on or off, its method and settings.

Two recipes (``datasets.<name>.recipe``): ``brain`` (the BraTS default: tissue-prior N4,
registration to the ICBM152 atlas, skull stripping, Nyul normalisation) and ``generic`` (N4 with
an Otsu mask, no atlas, optional resampling to ``spacing_mm``, z-score). ``datasets.<name>.steps``
switches single steps; ``datasets.<name>.normalize`` overrides ``preprocessing.normalize``.

Every door reads the one :class:`Recipe`: the workflow's rules (their params), the model bundle
(``plan.json``), ``medseg predict`` (the same stage functions) and the CLI step commands (their
defaults are :data:`DEFAULT`'s).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medseg.config import build, section
from medseg.preprocess.config import (N4Config, N4Stage, NativeStage, NormalizeStage, NormConfig, RegConfig,
                                     RegisterStage, SkullstripConfig, SkullstripStage)

#: the steps each recipe runs; ``datasets.<name>.steps`` overrides any of them
RECIPE_STEPS: dict[str, dict[str, bool]] = {
    "brain": {"n4": True, "register": True, "skullstrip": True},
    "generic": {"n4": True, "register": False, "skullstrip": False},
}
#: without registration the working space is each case's native grid in this orientation, so that
#: 2-D/2.5-D slices of every case run along the same anatomical axis
WORKING_ORIENTATION = "LPS"
#: the generic recipe's N4: classic N4 in the Otsu head mask, without the atlas tissue priors
GENERIC_N4 = {"mask": "otsu", "tissue_prior": False}
#: the reference modality of BraTS-like tasks (the others are registered to it; predictions come
#: back on its grid); other tasks use their first modality
PREFERRED_REFERENCE = "t1ce"


@dataclass(frozen=True)
class Steps:
    """Which preprocessing steps run (``datasets.<name>.steps``)."""

    n4: bool = True
    register: bool = True
    skullstrip: bool = True


@dataclass(frozen=True)
class Recipe:
    """How one dataset's scans are preprocessed.

    Attributes:
        name: ``brain`` or ``generic``.
        steps: the steps that run.
        reference: modality the others are registered to; predictions return to its native grid.
        orientation: working orientation without registration (:data:`WORKING_ORIENTATION`), else None.
        spacing_mm: working voxel size without registration (x, y, z; None: the native grid; a None
            axis: each case's own spacing along it, e.g. the slices of thick-slice scans).
        n4, register, normalize: the steps' settings.
        skullstrip: the brain-mask settings (``method: nonzero`` when the step is off: the brain
            is then the voxels nonzero in any modality).
        skullstrip_modality: the modality the brain mask is computed on.
    """

    name: str = "brain"
    steps: Steps = field(default_factory=Steps)
    reference: str = PREFERRED_REFERENCE
    orientation: str | None = None
    spacing_mm: tuple[float, ...] | None = None
    n4: N4Config = field(default_factory=N4Config)
    register: RegConfig = field(default_factory=RegConfig)
    skullstrip: SkullstripConfig = field(default_factory=SkullstripConfig)
    skullstrip_modality: str = "t1"
    normalize: NormConfig = field(default_factory=NormConfig)

    @property
    def stage(self) -> str:
        """The stage folder later stages read: ``reg`` (atlas space) or, without registration, ``n4``."""
        return "reg" if self.steps.register else "n4"

    def n4_stage(self) -> N4Stage:
        return N4Stage(self.n4 if self.steps.n4 else None, self.orientation, self.spacing_mm)

    def register_stage(self) -> RegisterStage:
        return RegisterStage(self.register if self.steps.register else None, self.reference,
                             skull_stripped=not self.steps.skullstrip)

    def skullstrip_stage(self) -> SkullstripStage:
        return SkullstripStage(self.skullstrip, self.skullstrip_modality, self.stage)

    def normalize_stage(self) -> NormalizeStage:
        return NormalizeStage(self.normalize, self.stage, masked=self.steps.skullstrip)

    def native_stage(self) -> NativeStage:
        return NativeStage(self.stage, self.reference, registered=self.steps.register)


#: the brain recipe with every default: what the CLI step commands use when not told otherwise
DEFAULT = Recipe()


def choose_reference(ds: Mapping[str, Any], modalities: Sequence[str], path: str = "datasets.<name>") -> str:
    """``datasets.<name>.reference``, else ``t1ce`` when the task has it, else its first modality."""
    ref = ds.get("reference") or (PREFERRED_REFERENCE if PREFERRED_REFERENCE in modalities else modalities[0])
    if ref not in modalities:
        raise ValueError(f"{path}.reference {ref!r} is not one of its modalities {list(modalities)}")
    return ref


def resolve_recipe(config: Mapping[str, Any], ds: Mapping[str, Any], recipe: str, modalities: Sequence[str],
                   path: str) -> Recipe:
    """The recipe of the dataset ``ds`` (``datasets.<name>``, named by ``path``) of a task with
    ``modalities`` whose recipe is ``recipe``: defaults < ``preprocessing`` < the dataset's keys.

    Raises:
        ValueError: naming the config key (an unknown recipe or step, a bad value, a skull-stripping
            modality the dataset does not have).
    """
    if recipe not in RECIPE_STEPS:
        raise ValueError(f"{path}.recipe must be one of {sorted(RECIPE_STEPS)}, got {recipe!r}")
    steps = build(Steps, {**RECIPE_STEPS[recipe], **(ds.get("steps") or {})}, f"{path}.steps")
    reference = choose_reference(ds, modalities, path)
    n4 = dict(section(config, ("preprocessing", "n4")) or {})
    norm = dict(section(config, ("preprocessing", "normalize")) or {})
    if recipe == "generic":  # classic N4 (Otsu head mask, no atlas priors), z-score
        n4.update(GENERIC_N4)
        norm["method"] = "zscore"
    norm.update(ds.get("normalize") or {})
    skull = build(SkullstripConfig, section(config, ("preprocessing", "skullstrip")), "preprocessing.skullstrip")
    if not steps.skullstrip:
        skull = SkullstripConfig(method="nonzero", modality=skull.modality)
    elif skull.method != "nonzero" and skull.modality not in modalities:
        raise ValueError(f"preprocessing.skullstrip.modality must be one of the modalities of {path} "
                         f"{list(modalities)} (it has steps.skullstrip on), got {skull.modality!r}")
    spacing = ds.get("spacing_mm")
    return Recipe(name=recipe, steps=steps, reference=reference,
                  orientation=None if steps.register else WORKING_ORIENTATION,
                  spacing_mm=tuple(None if s is None else float(s) for s in spacing) if spacing else None,
                  n4=build(N4Config, n4, "preprocessing.n4"),
                  register=build(RegConfig, section(config, ("preprocessing", "register")), "preprocessing.register"),
                  skullstrip=skull,
                  skullstrip_modality=skull.modality if skull.modality in modalities else reference,
                  normalize=build(NormConfig, norm, "preprocessing.normalize"))
