"""The demo cohorts' settings (``datasets.<name>.demo``): typed, frozen, light to import.

Loading the workflow lists a demo's cases from these (:mod:`medseg.cohort.demos`) without the generators'
imports (SimpleITK, scipy); :mod:`medseg.cohort.synth` and :mod:`medseg.cohort.synth_tissue` build the cases.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg.tasks.layouts.base import CaseFiles, Discovery

ORIENTATION_CODES = ("LPS", "RAS", "LSA")  # DICOM orientation codes a demo may write its scans in
ANATOMIES = ("icbm", "robex")  # the heads a BraTS demo is built from (medseg.cohort.anatomy)
FOV_KINDS = ("standard", "neck", "vertex_cropped", "tilted")  # with fov_variety: case index % 4 picks one
TISSUE_LABELS = {"CSF": 1, "GM": 2, "WM": 3}


def check_scan_geometry(orientations: tuple[str, ...], spacing_mm: tuple[float, ...]) -> None:
    """The orientations and voxel size a demo writes its cases in (both demos' ``demo`` settings)."""
    bad = set(orientations) - set(ORIENTATION_CODES)
    if bad:
        raise ValueError(f"demo.orientations: unknown {sorted(bad)}; valid: {sorted(ORIENTATION_CODES)}")
    if min(spacing_mm) <= 0:
        raise ValueError(f"demo.spacing_mm must be positive, got {spacing_mm}")


@dataclass(frozen=True)
class SynthConfig:
    """Demo cohort parameters (config key ``datasets.<name>.demo``); the defaults are the workflow
    demo's (``medseg synth-cohort`` builds the same cohort as ``snakemake results/brats_timm.json``).

    Attributes (beyond the self-explanatory ones):
        anatomy: head the cases are built from (:data:`medseg.cohort.anatomy.ANATOMIES`): ``icbm``
            (the atlas's own anatomy: truth maps native space to the atlas, so registration error
            can be scored, but atlas-based scores are inflated) or ``robex`` (one real subject that
            the atlas is not made from: scores predict real scans).
        fov_variety: clinical fields of view, by case index modulo 4 (:data:`FOV_KINDS`): standard,
            head with face and neck, cropped at the vertex (3-12 mm into the brain), or tilted by
            15-25 degrees (pitch, either way). Off: every case is a standard FOV.
    """

    n_cases: int = 16
    seed: int = 42
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    fov_mm: tuple[float, float, float] = (240.0, 240.0, 160.0)
    orientations: tuple[str, ...] = ("LPS", "RAS", "LSA")
    max_rotation_deg: float = 10.0
    max_translation_mm: float = 8.0
    elastic_mm: float = 2.5
    bias_strength: float = 0.25
    noise: tuple[float, float] = (0.015, 0.035)
    tumour_volume_ml: tuple[float, float] = (15.0, 100.0)
    prefix: str = "BraTS2021_"
    anatomy: str = "robex"
    fov_variety: bool = True

    def __post_init__(self) -> None:
        if self.anatomy not in ANATOMIES:
            raise ValueError(f"demo.anatomy must be one of {ANATOMIES}, got {self.anatomy!r}")
        if self.n_cases < 1:
            raise ValueError(f"demo.n_cases must be >= 1, got {self.n_cases}")
        check_scan_geometry(self.orientations, self.spacing_mm)

    @classmethod
    def from_dict(cls, d: dict) -> SynthConfig:
        d = dict(d)
        if d.pop("full_geometry", False):  # BraTS geometry: 240x240x155 at 1 mm
            d.update(spacing_mm=(1.0, 1.0, 1.0), fov_mm=(240.0, 240.0, 155.0))
        for k in ("spacing_mm", "fov_mm", "noise", "tumour_volume_ml", "orientations"):
            if k in d:
                v = d[k]
                d[k] = tuple(v) if isinstance(v, list | tuple) else (float(v),) * 3 if k == "spacing_mm" else v
        return cls(**d)

    def case_ids(self) -> list[str]:
        return [f"{self.prefix}{i:05d}" for i in range(self.n_cases)]


@dataclass(frozen=True)
class TissueSynthConfig:
    """Tissue demo parameters (config key ``datasets.<name>.demo`` with ``kind: tissue``)."""

    n_cases: int = 12
    n_unlabelled: int = 2
    seed: int = 11
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 3.0)
    fov_mm: tuple[float, float, float] = (200.0, 230.0, 190.0)
    orientations: tuple[str, ...] = ("LPS", "RAS", "LSA")
    max_rotation_deg: float = 10.0
    max_translation_mm: float = 8.0
    elastic_mm: float = 3.0
    bias_strength: float = 0.3
    contrast_jitter: float = 0.08
    noise: tuple[float, float] = (0.01, 0.03)
    prefix: str = "tissue_"

    def __post_init__(self) -> None:
        if not 0 <= self.n_unlabelled < self.n_cases:
            raise ValueError(f"demo.n_unlabelled must be in [0, n_cases), got {self.n_unlabelled} of {self.n_cases}")
        check_scan_geometry(self.orientations, self.spacing_mm)

    @classmethod
    def from_dict(cls, d: dict) -> TissueSynthConfig:
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k != "full_geometry"}
        if "spacing_mm" in d and not isinstance(d["spacing_mm"], tuple):
            d["spacing_mm"] = (float(d["spacing_mm"]),) * 3
        return cls(**d)

    def case_ids(self) -> list[str]:
        return [f"{self.prefix}{i:03d}" for i in range(self.n_cases)]

    def labelled(self, case: str) -> bool:
        return self.case_ids().index(case) < self.n_cases - self.n_unlabelled

    def files(self, root: str | Path) -> dict[str, CaseFiles]:
        root = Path(root)
        out = {}
        for c in self.case_ids():
            if self.labelled(c):
                out[c] = CaseFiles({"t1": str(root / "imagesTr" / f"{c}.nii.gz")}, {"t1": 0},
                                   str(root / "labelsTr" / f"{c}.nii.gz"))
            else:
                out[c] = CaseFiles({"t1": str(root / "imagesTs" / f"{c}.nii.gz")}, {"t1": 0})
        return out

    def discovery(self, root: str | Path) -> Discovery:
        """What the Decathlon reader finds once the cohort is written (known before: deterministic)."""
        return Discovery("msd", str(root), self.files(root), modalities=("t1",), labels=dict(TISSUE_LABELS))
