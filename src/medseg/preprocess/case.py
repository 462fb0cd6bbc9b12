"""A case on its way through preprocessing: its source files and the folder its stages write.

:class:`CaseFolder` is the one place that names a case's intermediate files (``n4/``, ``reg/``,
``tfm_atlas.tfm``, ``brain_mask.nii.gz`` ...): the workflow's rules declare their outputs with
it (``CaseFolder("results/{dataset}/preprocess/{case}")``, wildcards and all), and ``medseg
predict`` writes the same files into a temporary folder, through the same stage functions.
:class:`CaseJob` is what a stage function is given: which case, its files, its folder.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

STAGES = ("n4", "reg")  # folders of a case's images, <modality>.nii.gz each


@dataclass(frozen=True)
class CaseFolder:
    """The files of one case's preprocessing, under ``root`` (a folder, or a wildcard pattern)."""

    root: str

    def _p(self, name: str) -> str:
        return f"{self.root}/{name}"

    n4 = property(lambda self: self._p("n4"))
    reg = property(lambda self: self._p("reg"))
    atlas_transform = property(lambda self: self._p("tfm_atlas.tfm"))
    atlas_warp = property(lambda self: self._p("warp_atlas.nii.gz"))
    brain_mask = property(lambda self: self._p("brain_mask.nii.gz"))
    brain_stats = property(lambda self: self._p("brain_stats.json"))
    norm = property(lambda self: self._p("norm.npz"))
    n4_qc = property(lambda self: self._p("n4_qc.json"))
    register_qc = property(lambda self: self._p("register_qc.json"))
    skullstrip_qc = property(lambda self: self._p("skullstrip_qc.json"))
    n4_png = property(lambda self: self._p("qc_n4.png"))
    register_png = property(lambda self: self._p("qc_register.png"))
    mask_png = property(lambda self: self._p("qc_mask.png"))
    reg_seg = property(lambda self: self._p("reg/seg.nii.gz"))

    def stage_dir(self, stage: str) -> str:
        """``n4/`` or ``reg/`` (:data:`STAGES`)."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        return self._p(stage)

    def images(self, stage: str, modalities: Sequence[str]) -> dict[str, str]:
        """A stage folder's images, modality -> ``<stage>/<modality>.nii.gz``."""
        d = self.stage_dir(stage)
        return {m: f"{d}/{m}.nii.gz" for m in modalities}

    def bias_fields(self, modalities: Sequence[str]) -> dict[str, str]:
        return {m: f"{self.n4}/bias_{m}.nii.gz" for m in modalities}

    def modality_transforms(self, modalities: Sequence[str]) -> dict[str, str]:
        """Reference native -> modality native, one ``reg/tfm_<modality>.tfm`` each."""
        return {m: f"{self.reg}/tfm_{m}.tfm" for m in modalities}


@dataclass(frozen=True)
class CaseJob:
    """One case as a stage function is given it.

    Attributes:
        case: case id (in every message).
        images: modality -> source scan (raw, as listed by the case sheet).
        folder: where the case's stages write (:class:`CaseFolder`).
        seg: the source label map (``None``: unlabelled).
        channels: modality -> channel of a 4-D source file (Decathlon).
        truth_dir: the demo cohort's truth folder of the case (applied bias fields), for QC only.
        figures: draw the QC figures (the workflow's report shows them; ``medseg predict`` skips them).
    """

    case: str
    images: Mapping[str, str]
    folder: CaseFolder
    seg: str | None = None
    channels: Mapping[str, int] = field(default_factory=dict)
    truth_dir: str | None = None
    figures: bool = True

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.images)
