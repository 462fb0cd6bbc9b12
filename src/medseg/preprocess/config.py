"""Preprocessing settings (config keys ``preprocessing.n4``, ``register``, ``skullstrip``, ``normalize``).

Typed, frozen and light to import (no SimpleITK, no torch): the plan (:mod:`medseg.plan`) resolves
a dataset's recipe from them when the workflow loads. The stage code lives in the sibling modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# the registries' keys (medseg.preprocess.register.BACKENDS, medseg.preprocess.skullstrip.METHODS;
# a test keeps them equal), checked here without importing the registration stack
REG_BACKENDS = ("elastix", "sitk")
SKULLSTRIP_METHODS = ("atlas", "deepbet", "nonzero", "robex")
NORM_METHODS = ("nyul", "zscore", "none")

MASKS = ("otsu", "brain")



@dataclass(frozen=True)
class N4Config:
    """Parameters of :func:`n4_correct` (config key ``preprocessing.n4``).

    Attributes:
        mask: fitting region: ``brain`` (registered atlas brain mask) or ``otsu`` (head foreground).
        tissue_prior: divide by the expected anatomy (registered WM/GM/CSF priors, contrast fitted
            per image) before fitting; needs ``mask: brain``.
        prior_passes: contrast-fit + N4 rounds with ``tissue_prior``.
        fit_spacing_mm: N4 fits on the image subsampled (integer factor per axis) to about this
            voxel size: 8 mm keeps a fit under a second per pass at any input resolution.
        shrink_factor: if set, subsample by this factor along the finest axis instead (coarser
            axes proportionally less, so anisotropic scans still get a near-isotropic grid).
        iterations: maximum iterations per fitting level (one entry per level; each level halves
            the B-spline spacing).
        convergence: convergence threshold (N4's coefficient of variation of field updates).
        spline_distance_mm: B-spline control point spacing of the field at the first level, in mm.
        bins: histogram bins used for sharpening.
        fwhm: assumed full width at half maximum of the log bias distribution (N4's sharpening).
        wiener_noise: Wiener filter noise of the deconvolution.
        register_spacing_mm: voxel size the atlas is registered on.
        share_registration: register the atlas once per case, to its first modality, and start each
            other modality's registration from that transform (one level, no start search): the
            modalities of one session differ by head motion only (a few mm and degrees). False:
            each modality registered from scratch. (Reusing the first transform as it is, without
            the refinement, misplaces the priors by the head motion: on the demo's ICBM152 heads the
            recovered bias correlation fell from 0.96 to 0.88.)
    """

    mask: str = "brain"
    tissue_prior: bool = True
    prior_passes: int = 1
    fit_spacing_mm: float = 8.0
    shrink_factor: int | None = None
    iterations: tuple[int, ...] = (30,)
    convergence: float = 1e-6
    spline_distance_mm: float = 60.0
    bins: int = 200
    fwhm: float = 0.1
    wiener_noise: float = 0.01
    register_spacing_mm: float = 4.0
    share_registration: bool = True

    def __post_init__(self) -> None:
        if self.mask not in MASKS:
            raise ValueError(f"n4.mask must be one of {MASKS}, got {self.mask!r}")
        if self.tissue_prior and self.mask != "brain":
            raise ValueError("n4.tissue_prior needs n4.mask: brain (the priors come from the same atlas registration)")
        if self.fit_spacing_mm <= 0:
            raise ValueError(f"n4.fit_spacing_mm must be > 0, got {self.fit_spacing_mm}")
        if self.shrink_factor is not None and self.shrink_factor < 1:
            raise ValueError(f"n4.shrink_factor must be >= 1, got {self.shrink_factor}")
        if not self.iterations or min(self.iterations) < 1:
            raise ValueError(f"n4.iterations must be a non-empty list of positive ints, got {self.iterations}")
        if self.spline_distance_mm <= 0:
            raise ValueError(f"n4.spline_distance_mm must be > 0, got {self.spline_distance_mm}")
        if self.prior_passes < 1:
            raise ValueError(f"n4.prior_passes must be >= 1, got {self.prior_passes}")
        if self.register_spacing_mm <= 0:
            raise ValueError(f"n4.register_spacing_mm must be > 0, got {self.register_spacing_mm}")


KINDS = ("rigid", "affine", "bspline")



ATLAS_KINDS = ("affine", "bspline")



INITS = ("auto", "moments", "search")



@dataclass(frozen=True)
class RegConfig:
    """Registration parameters (config key ``preprocessing.register``).

    Attributes:
        backend: ``elastix`` (itk-elastix) or ``sitk`` (SimpleITK's registration framework).
        iterations: optimiser iterations per resolution level.
        levels: number of multi-resolution levels (shrink 2**(levels-1) ... 1, times the finest shrink).
        finest_shrink_log2: the finest level is shrunk by 2**this (1: stop at half resolution,
            ample for rigid/affine alignment of 1-2 mm images and 4x cheaper).
        sampling: fraction of voxels sampled for the metric (fixed seed, deterministic).
        bins: histogram bins of Mattes mutual information.
        seed: sampling seed.
        atlas_spacing_mm: voxel size of the atlas-space grid the model works on.
        min_nmi: QC gate -- normalised mutual information (Studholme, 1..2) below this fails the job.
        qc_action: ``error`` (fail the case's job) or ``warn`` (log and go on).
        atlas_kind: reference -> atlas registration: ``affine`` (12 dof) or ``bspline`` (the affine,
            then a B-spline deformation; written as ``warp_atlas.nii.gz``, zero when ``affine``).
        bspline_grid_mm: B-spline control point spacing in mm (coarse = smooth; on the demo cohort
            50 mm recovered the elastic deformation best, finer grids follow tumour mass effect more).
        bspline_iterations: L-BFGS-B iterations (and metric evaluations) per resolution level of the
            sitk B-spline stage. The elastix backend's stochastic optimiser uses ``iterations``.
        bspline_samples: voxels sampled by the metric per B-spline level (a count, not a fraction:
            the stage needs ~5000 whatever the voxel size; time grows linearly with it).
        work_spacing_mm: images finer than this are averaged down (integer factor per axis) to
            about this voxel size before registering, so a registration costs the same at 1 mm as
            at 2 mm; transforms are physical, so they apply to the full-resolution images.
        init: start of affine / B-spline registrations (sitk backend): ``moments`` (centres of mass
            matched), ``search`` (then a coarse exhaustive search over rotations and head-foot /
            front-back shifts, on ``search_spacing_mm`` images, keeps the best mutual information:
            a head with neck and face, cropped or tilted 20 degrees starts near the right pose) or
            ``auto`` (``moments``, and the search only when that registration fails its gate: it hit
            its iteration limit or its normalised mutual information is below ``min_nmi_at_limit``;
            the better of the two is kept; the QC JSON says whether the search ran). ``search`` is
            the default: the search costs ~0.15 s on a 2 mm head (8 mm images) and its start saves
            optimiser iterations, while a failed ``auto`` start costs ~1 s more than the search
            (benchmarks/bench_register.py --crosswise: as fast on the demo's mix of FOVs, less robust).
        search_spacing_mm: voxel size of the coarse search.
        min_step_mm: the linear (rigid, affine) optimiser stops when its step, in mm of voxel shift
            (physical-shift scales), falls below this. ITK's usual 1e-4 costs ~2x the iterations of
            1e-3 for no smaller error; 1e-2 stopped one 3 mm affine early (NMI 1.18 instead of 1.34).
        gradient_image: the metric takes its gradients from a smoothed gradient image of the moving
            image built at every level (ITK's default) instead of central differences at the sampled
            points (false: no per-level setup, ~0.3 s per level on a 2 mm head, and no larger error).
        min_nmi_at_limit: QC gate -- a registration that used all its iterations at the finest
            level (it did not converge; an affine that hits the limit first gets one more round of
            ``iterations`` at the finest level) fails when its normalised mutual information is below this.
    """

    backend: str = "sitk"
    iterations: int = 200
    levels: int = 2
    finest_shrink_log2: int = 1
    sampling: float = 0.05
    bins: int = 32
    seed: int = 1
    atlas_spacing_mm: float = 2.0
    min_nmi: float = 1.02
    qc_action: str = "error"
    atlas_kind: str = "affine"
    bspline_grid_mm: float = 50.0
    bspline_iterations: int = 20
    bspline_samples: int = 6000
    work_spacing_mm: float = 2.0
    init: str = "search"
    search_spacing_mm: float = 8.0
    min_nmi_at_limit: float = 1.10
    min_step_mm: float = 0.001
    gradient_image: bool = False

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"register.init must be one of {INITS}, got {self.init!r}")
        if self.search_spacing_mm <= 0:
            raise ValueError(f"register.search_spacing_mm must be > 0, got {self.search_spacing_mm}")
        if not 0 < self.min_step_mm < 1:
            raise ValueError(f"register.min_step_mm must be in (0, 1) mm, got {self.min_step_mm}")
        if self.qc_action not in ("error", "warn"):
            raise ValueError(f"register.qc_action must be 'error' or 'warn', got {self.qc_action!r}")
        if self.backend not in REG_BACKENDS:
            raise ValueError(f"register.backend must be one of {sorted(REG_BACKENDS)}, got {self.backend!r}")
        if not 0 < self.sampling <= 1:
            raise ValueError(f"register.sampling must be in (0, 1], got {self.sampling}")
        if self.levels < 1 or self.iterations < 1:
            raise ValueError("register.levels and register.iterations must be >= 1")
        if self.atlas_kind not in ATLAS_KINDS:
            raise ValueError(f"register.atlas_kind must be one of {ATLAS_KINDS}, got {self.atlas_kind!r}")
        if self.bspline_grid_mm <= 0:
            raise ValueError(f"register.bspline_grid_mm must be > 0, got {self.bspline_grid_mm}")
        if self.bspline_iterations < 1:
            raise ValueError(f"register.bspline_iterations must be >= 1, got {self.bspline_iterations}")
        if self.bspline_samples < 100:
            raise ValueError(f"register.bspline_samples must be >= 100, got {self.bspline_samples}")
        if self.work_spacing_mm <= 0:
            raise ValueError(f"register.work_spacing_mm must be > 0, got {self.work_spacing_mm}")


@dataclass(frozen=True)
class SkullstripConfig:
    """Config key ``preprocessing.skullstrip``.

    Attributes:
        method: ``deepbet`` (default: the most accurate on heads that are not the atlas), ``atlas``,
            ``robex`` or ``nonzero``.
        modality: modality the mask is computed on (T1-like contrast suits the atlas best).
        refine: intensity + morphology refinement of the warped atlas mask (:func:`refine_mask`).
        band_mm: width of the boundary band the refinement may change, in mm.
        register: registration settings for the atlas method.
        atlas_dir: folder of a saved :class:`~medseg.preprocess.atlas.Atlas` (default: built in memory).
        dark_fraction: the refinement trims edge voxels darker than this x the brain's 2nd
            intensity percentile (bone and air in T1; CSF in T1 stays above it).
        deepbet_threshold: probability above which a voxel is brain (``deepbet``).
        deepbet_size: voxels per axis the brain's box is resized to for deepbet's brain network (a
            multiple of 32; deepbet itself: 256, ~2.4 s on one CPU thread, 192: ~1 s). With
            ``deepbet_margin`` it sets the scale the network sees the brain at.
        deepbet_margin: the box around the bounding-box network's brain, as a fraction of its size
            added on each side (deepbet itself: 0.1). ``benchmarks/bench_skullstrip.py`` scores both.
        min_brain_ml, max_brain_ml: QC gate ``brain_volume`` -- plausible brain mask volume in
            native space, mL (adult brains with their CSF are ~1,000-1,800 mL; the ICBM152 brain,
            which MNI space enlarges, is ~1,900 mL).
        fov_edge_mm2: QC gate ``mask_at_fov_edge`` -- area (mm^2) of mask tolerated on a face of the
            field of view where the image shows no head.
        qc_action: ``error`` (a failed gate fails the case's job, naming the case and the check) or
            ``warn`` (the reasons go under ``qc_warnings`` in the QC JSON). The ``atlas`` method also
            gates its registration (``register.min_nmi_at_limit``).
    """

    method: str = "deepbet"
    modality: str = "t1"
    refine: bool = True
    band_mm: float = 4.0
    register: RegConfig = field(default_factory=RegConfig)
    atlas_dir: str | None = None
    dark_fraction: float = 0.8
    deepbet_threshold: float = 0.5
    deepbet_size: int = 192
    deepbet_margin: float = 0.05
    min_brain_ml: float = 700.0
    max_brain_ml: float = 2400.0
    fov_edge_mm2: float = 200.0
    qc_action: str = "error"

    def __post_init__(self) -> None:
        if self.method not in SKULLSTRIP_METHODS:
            raise ValueError(f"skullstrip.method must be one of {sorted(SKULLSTRIP_METHODS)}, got {self.method!r}")
        if self.band_mm <= 0:
            raise ValueError(f"skullstrip.band_mm must be > 0, got {self.band_mm}")
        if self.qc_action not in ("error", "warn"):
            raise ValueError(f"skullstrip.qc_action must be 'error' or 'warn', got {self.qc_action!r}")
        if not 0 <= self.min_brain_ml < self.max_brain_ml:
            raise ValueError(f"skullstrip.min_brain_ml must be >= 0 and < max_brain_ml, got {self.min_brain_ml}, "
                             f"{self.max_brain_ml}")
        if self.fov_edge_mm2 < 0:
            raise ValueError(f"skullstrip.fov_edge_mm2 must be >= 0, got {self.fov_edge_mm2}")
        if not 0 < self.deepbet_threshold < 1:
            raise ValueError(f"skullstrip.deepbet_threshold must be in (0, 1), got {self.deepbet_threshold}")
        if self.dark_fraction < 0:
            raise ValueError(f"skullstrip.dark_fraction must be >= 0, got {self.dark_fraction}")
        if self.deepbet_size < 64 or self.deepbet_size % 32:
            raise ValueError(f"skullstrip.deepbet_size must be a multiple of 32 and >= 64 (deepbet's network halves "
                             f"the grid 5 times), got {self.deepbet_size}")
        if not 0 <= self.deepbet_margin <= 0.5:
            raise ValueError(f"skullstrip.deepbet_margin must be in [0, 0.5], got {self.deepbet_margin}")





@dataclass(frozen=True)
class NormConfig:
    """Config key ``preprocessing.normalize``.

    Attributes:
        method: per-modality method name or one for all: ``nyul`` (then z-score), ``zscore``, ``none``.
        percentiles: Nyul landmarks; the first and last are the min/max of the standard scale.
        scale: (min, max) of the Nyul standard scale.
        clip: percentiles (inside the brain) intensities are clipped to before z-scoring.
    """

    method: str | dict = "nyul"
    percentiles: tuple[float, ...] = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
    scale: tuple[float, float] = (0.0, 100.0)
    clip: tuple[float, float] = (0.5, 99.5)

    def method_for(self, modality: str) -> str:
        m = self.method.get(modality, "nyul") if isinstance(self.method, dict) else self.method
        if m not in NORM_METHODS:
            raise ValueError(f"normalize.method for {modality} must be one of {NORM_METHODS}, got {m!r}")
        return m

    def __post_init__(self) -> None:
        p = [float(v) for v in self.percentiles]
        if len(p) < 3 or any(b <= a for a, b in zip(p, p[1:])) or p[0] < 0 or p[-1] > 100:
            raise ValueError(f"normalize.percentiles must be >= 3 increasing values in [0, 100], got {self.percentiles}")


# What each per-case stage is given: the settings of its step and the facts of the recipe it needs
# (built by medseg.plan.recipe.Recipe, one per stage, so a rule's params change only with its own step).


@dataclass(frozen=True)
class N4Stage:
    """The first stage to read the scans: N4 (``settings`` None: the step is off: copy, unit field),
    reoriented to ``orientation`` and resampled to ``spacing_mm`` (x, y, z) when set."""

    settings: N4Config | None = field(default_factory=N4Config)
    orientation: str | None = None
    spacing_mm: tuple[float, ...] | None = None


@dataclass(frozen=True)
class RegisterStage:
    """Modalities to ``reference`` (rigid), reference to the atlas (``settings`` None: native space kept);
    ``skull_stripped``: register to the atlas brain (scans that come skull-stripped), not the head."""

    settings: RegConfig | None = field(default_factory=RegConfig)
    reference: str = "t1ce"
    skull_stripped: bool = False


@dataclass(frozen=True)
class SkullstripStage:
    """The brain mask of ``modality``'s image in the ``stage`` folder (``reg`` or ``n4``)."""

    settings: SkullstripConfig = field(default_factory=SkullstripConfig)
    modality: str = "t1"
    stage: str = "reg"


@dataclass(frozen=True)
class NormalizeStage:
    """Intensity normalisation of the ``stage`` folder's images, inside the brain mask (``masked``)
    or, without skull stripping, inside the voxels nonzero in any modality."""

    settings: NormConfig = field(default_factory=NormConfig)
    stage: str = "reg"
    masked: bool = True


@dataclass(frozen=True)
class NativeStage:
    """Where predictions are made and how they return: the ``stage`` folder's grid (the ``reference``
    image), through the atlas transform and warp when ``registered``."""

    stage: str = "reg"
    reference: str = "t1ce"
    registered: bool = True
