"""What a dataset is: its modalities, its labels and (optionally) the regions built from them.

A task is the one place that knows how label maps on disk become training targets and how
network outputs become label maps again:

* ``labels`` ``{name: value}``: mutually exclusive classes (background is value 0, implicit).
  Without regions the network has ``len(labels) + 1`` softmax outputs (channel 0 background,
  channel i the i-th label in declaration order) and the target is a class-index map.
* ``regions`` ``{name: [label names]}``: overlapping unions of labels, one sigmoid output each
  (nnU-Net's region-based training; BraTS WT/TC/ET is the preset). Region maps are turned back
  into labels by painting regions from the largest to the smallest with the one label that each
  adds (nnU-Net's ``regions_class_order``); a set of regions that cannot be decoded is refused.

Label values outside the task are errors naming the case and file, never silently remapped.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.io import InputError


class LabelError(InputError):
    """A label map holds values the task does not define."""


@dataclass(frozen=True)
class Task:
    """One segmentation task.

    Attributes:
        name: dataset key.
        modalities: input channel names, in channel order (any names, >= 1).
        labels: ``{name: value}`` foreground classes, values in 1..255, unique.
        regions: ``{name: (label names...)}``; empty: softmax over labels.
        preset: ``brats2021`` / ``brats2023`` for BraTS tasks (lesion-wise scores, convention guard).
        recipe: preprocessing recipe, ``brain`` or ``generic``.
    """

    name: str
    modalities: tuple[str, ...]
    labels: Mapping[str, int]
    regions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    preset: str | None = None
    recipe: str = "brain"

    def __post_init__(self) -> None:
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"datasets.{self.name}.modalities must be >= 1 distinct names, got {list(self.modalities)}")
        if not self.labels:
            raise ValueError(f"datasets.{self.name}.labels must name at least one label, got {dict(self.labels)}")
        values = list(self.labels.values())
        if any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 255 for v in values) \
                or len(set(values)) != len(values):
            raise ValueError(f"datasets.{self.name}.labels values must be distinct integers in 1..255 "
                             f"(0 is background), got {dict(self.labels)}")
        for r, members in self.regions.items():
            unknown = [m for m in members if m not in self.labels]
            if not members or unknown:
                raise ValueError(f"datasets.{self.name}.regions.{r} must list labels of {list(self.labels)}, "
                                 f"got {list(members)}")
        if self.recipe not in RECIPES:
            raise ValueError(f"datasets.{self.name}.recipe must be one of {list(RECIPES)}, got {self.recipe!r}")
        if self.regions:
            self.region_order()  # raises if the regions cannot be decoded into labels

    # -- outputs -----------------------------------------------------------------------------------
    @property
    def target_kind(self) -> str:
        """``regions`` (sigmoid, one channel per region) or ``labels`` (softmax incl. background)."""
        return "regions" if self.regions else "labels"

    @property
    def activation(self) -> str:
        return "sigmoid" if self.regions else "softmax"

    @property
    def channels(self) -> tuple[str, ...]:
        """Names of the network's output channels."""
        return tuple(self.regions) if self.regions else ("background", *self.labels)

    @property
    def n_outputs(self) -> int:
        return len(self.channels)

    def region_values(self) -> dict[str, tuple[int, ...]]:
        return {r: tuple(self.labels[m] for m in ms) for r, ms in self.regions.items()}

    def region_order(self) -> list[tuple[str, int]]:
        """``[(region, label value painted)]`` from the largest region to the smallest.

        Each region paints the single label it holds that no smaller region (painted after it)
        holds; e.g. BraTS: WT paints ED, TC paints NCR, ET paints ET.

        Raises:
            ValueError: a region adds no label or several (its labels cannot be told apart).
        """
        order = sorted(self.regions, key=lambda r: -len(self.regions[r]))
        out = []
        for i, r in enumerate(order):
            later = {m for s in order[i + 1:] for m in self.regions[s]}
            own = [m for m in self.regions[r] if m not in later]
            if len(own) != 1:
                raise ValueError(f"datasets.{self.name}.regions cannot be turned back into labels: region {r!r} "
                                 f"adds labels {own} beyond the smaller regions (exactly one needed); add a region "
                                 "that separates them, or drop regions to train on the labels directly")
            out.append((r, self.labels[own[0]]))
        missing = set(self.labels) - {m for ms in self.regions.values() for m in ms}
        if missing:
            raise ValueError(f"datasets.{self.name}.regions leave labels {sorted(missing)} out of every region")
        return out

    # -- label maps <-> targets ------------------------------------------------------------------
    def check_values(self, values: Iterable[int], where: str = "") -> None:
        """Raise :class:`LabelError` if a label map's ``values`` are not all in this task."""
        present = {int(v) for v in values}
        bad = sorted(present - {0, *self.labels.values()})
        if bad:
            raise LabelError(f"{where}label values {bad} are not in the task's labels "
                             f"{ {**{'background': 0}, **dict(self.labels)} }; fix the label map or the "
                             f"dataset's labels in the config")

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """Training target of a label map ``(*spatial)``: regions ``(K, *spatial)`` uint8 binary masks,
        or labels ``(*spatial)`` uint8 class indices (0 background, i = i-th label)."""
        labels = np.asarray(labels)
        if self.regions:
            return np.stack([np.isin(labels, vals) for vals in self.region_values().values()]).astype(np.uint8)
        lut = np.zeros(256, np.uint8)
        for i, v in enumerate(self.labels.values(), start=1):
            lut[v] = i
        return lut[labels.astype(np.uint8)]

    def decode(self, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Label map ``(*spatial)`` uint8 from output probabilities ``(K, *spatial)`` (after the activation)."""
        probs = np.asarray(probs)
        if probs.shape[0] != self.n_outputs:
            raise ValueError(f"task {self.name}: expected {self.n_outputs} output channels {list(self.channels)}, "
                             f"got {probs.shape[0]}")
        out = np.zeros(probs.shape[1:], np.uint8)
        if self.regions:
            index = {r: i for i, r in enumerate(self.regions)}
            for r, value in self.region_order():
                out[probs[index[r]] > threshold] = value
            return out
        values = np.array([0, *self.labels.values()], np.uint8)
        return values[np.argmax(probs, axis=0)]

    def masks(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Binary mask per scored structure of a label map: every region, then every label."""
        out = {r: np.isin(labels, vals) for r, vals in self.region_values().items()}
        out.update({f"{n}": labels == v for n, v in self.labels.items()})
        return out

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; labels and regions as ``[name, ...]`` pairs, because their order is the
        order of the network's output channels and JSON files are written with sorted keys."""
        return {"name": self.name, "modalities": list(self.modalities), "labels": [[n, v] for n, v in self.labels.items()],
                "regions": [[r, list(m)] for r, m in self.regions.items()], "preset": self.preset,
                "recipe": self.recipe}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        pairs = lambda x: list(x.items()) if isinstance(x, Mapping) else [tuple(p) for p in (x or [])]  # noqa: E731
        return cls(name=d["name"], modalities=tuple(d["modalities"]), labels=dict(pairs(d["labels"])),
                   regions={r: tuple(m) for r, m in pairs(d.get("regions"))}, preset=d.get("preset"),
                   recipe=d.get("recipe", "brain"))

    def structures(self) -> dict[str, tuple[int, ...]]:
        """What figures outline: every region (its label values), or every label of a task without regions."""
        return self.region_values() if self.regions else {n: (v,) for n, v in self.labels.items()}


RECIPES = ("brain", "generic")

