"""Slide branch data: GeoJSON <-> masks, stain normalisation, demo dataset, case sheet and tiles."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage
from skimage import data

from medseg.io import InputError
from medseg.wsi.annotations import (check_annotations, fill_polygon, mask_to_polygons, polygons_to_geojson, rasterize,
                                    read_mask)
from medseg.wsi.demo import CLASSES, DemoConfig, apply_stain, make_demo_dataset, remix_as_he
from medseg.wsi.config import split_of
from medseg.wsi.sheet import build_slide_sheet, read_sheet, slide_mpp, write_sheet
from medseg.wsi.slide import open_slide
from medseg.wsi.stain import StainNormalizer, StainTarget, fit_target, is_glass
from medseg.wsi.synthetic import write_synthetic_slide
from medseg.wsi.config import TileConfig
from medseg.wsi.tiles import class_aware_sample, tile_slide
from medseg.wsi.tissue import tissue_mask, tissue_mask_from_rgb


def square(x0, y0, x1, y1, name, holes=()):
    rings = [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]] + [list(h) for h in holes]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {"objectType": "annotation", "classification": {"name": name}}}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    make_demo_dataset(out, DemoConfig(n_slides=4, size=1024, seed=3), cmu=None)  # scikit-image fallback textures
    return out


def test_rasterize_pixel_centres_holes_and_windows():
    hole = [[4, 4], [8, 4], [8, 8], [4, 8], [4, 4]]
    feats = [square(0, 0, 12, 12, "a", [hole]), square(10, 0, 16, 4, "b")]
    mask = rasterize(feats, ["a", "b"], (8, 10), downsample=2.0)  # level 1: pixel (r, c) centre at (2c+1, 2r+1)
    expected = np.zeros((8, 10), np.uint8)
    expected[:6, :6] = 1
    expected[2:4, 2:4] = 0  # the hole: centres 5 and 7 lie inside [4, 8]
    expected[:2, 5:8] = 2  # b painted over a: centres x 11, 13, 15 in [10, 16], y 1, 3 in [0, 4]
    np.testing.assert_array_equal(mask, expected)
    window = rasterize(feats, ["a", "b"], (3, 3), 2.0, offset=(1, 4))
    np.testing.assert_array_equal(window, expected[1:4, 4:7])


def test_geojson_round_trip_is_exact_at_the_traced_level():
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.standard_normal((120, 160)), 5)
    mask = np.zeros(field.shape, np.uint8)
    mask[field > 0.02] = 1
    mask[field < -0.03] = 2
    mask[40:50, 40:50] = 0  # holes in whatever surrounds it
    mask[44:46, 44:46] = 2  # an island in the hole
    mask[0, 0] = 1
    mask[1, 1] = 1  # diagonal-only neighbours: one 8-connected object
    polys = mask_to_polygons(mask, downsample=4.0)
    assert any(len(rings) > 1 for _, rings in polys)  # holes kept
    collection = json.loads(json.dumps(polygons_to_geojson(polys, ["a", "b"])))
    np.testing.assert_array_equal(rasterize(collection["features"], ["a", "b"], mask.shape, 4.0), mask)
    assert (rasterize(collection["features"], ["a", "b"], mask.shape, 4.0, offset=(30, 30))[:20, :20]
            == mask[30:50, 30:50]).all()


def test_fill_polygon_matches_point_in_polygon():
    from matplotlib.path import Path as MplPath

    rng = np.random.default_rng(1)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
    ring = np.stack([20 + rng.uniform(5, 18, 40) * np.sin(angles), 25 + rng.uniform(5, 18, 40) * np.cos(angles)], 1)
    rr, cc = np.mgrid[:40, :50]
    expected = MplPath(ring).contains_points(np.stack([rr.ravel(), cc.ravel()], 1)).reshape(40, 50)
    np.testing.assert_array_equal(fill_polygon([ring], (40, 50)), expected)


def test_annotation_errors_name_the_file(tmp_path):
    path = tmp_path / "s1.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [square(0, 0, 10, 10, "Tumour")]}))
    with pytest.raises(InputError, match=r"s1\.geojson: feature 0 has class 'Tumour'.*\['a', 'b'\]"):
        read_mask(path, ["a", "b"], (4, 4))
    path.write_text(json.dumps([square(200, 0, 500, 10, "a")]))  # wholly outside (a polygon across the edge is clipped)
    with pytest.raises(InputError, match=r"s1\.geojson: feature 0 \('a'\) spans x 200\.\.500.*outside the slide"):
        check_annotations(path, ["a"], (100, 100))
    path.write_text(json.dumps([{**square(0, 0, 5, 5, "a"), "properties": {}}]))
    with pytest.raises(InputError, match="feature 0 has no classification"):
        check_annotations(path, ["a"], (100, 100))
    with pytest.raises(InputError, match="missing.geojson does not exist"):
        read_mask(tmp_path / "missing.geojson", ["a"], (4, 4))


def test_tissue_methods_and_no_mpp(tmp_path):
    rgb = np.full((64, 64, 3), 242, np.uint8)
    rgb[16:48, 16:48] = (180, 90, 160)
    for method in ("saturation", "od", "grey", "auto"):
        assert tissue_mask_from_rgb(rgb, method).sum() == 32 * 32, method
    with pytest.raises(ValueError, match="method must be one of"):
        tissue_mask_from_rgb(rgb, "hsv")
    bare = write_synthetic_slide(tmp_path / "nompp.tif", 256, mpp=None, min_level_side=256)
    with pytest.raises(ValueError, match=r"nompp\.tif has no microns-per-pixel metadata: set datasets\.<name>\.mpp"):
        slide_mpp(bare)
    assert slide_mpp(bare, 0.25) == 0.25


@pytest.mark.parametrize("method, ratio", [("macenko", 0.35), ("reinhard", 0.75)])
def test_stain_normaliser_recovers_a_known_perturbation(method, ratio, tmp_path):
    reference = remix_as_he(data.immunohistochemistry())[::2, ::2]  # H&E colours, one stain plane
    target = fit_target(method, [reference], ["ref"])
    target.save(tmp_path / "stain.json")
    target = StainTarget.load(tmp_path / "stain.json")
    tissue = ~is_glass(reference)
    for pert in ({"scale": [1.3, 0.7, 1.0], "tilt_deg": [3.0, -3.0]}, {"scale": [0.75, 1.25, 1.0], "tilt_deg": [-2.0, 3.0]}):
        perturbed = apply_stain(reference, pert)
        normalised = StainNormalizer.for_pixels(target, perturbed)(perturbed)
        before = np.abs(perturbed.astype(float) - reference)[tissue].mean()
        after = np.abs(normalised.astype(float) - reference)[tissue].mean()
        assert before > 8 and after < ratio * before, (method, pert, before, after)
    glass = np.full((4, 4, 3), 250, np.uint8)
    np.testing.assert_array_equal(StainNormalizer.for_pixels(target, reference)(glass), glass)  # glass untouched
    with pytest.raises(ValueError, match="stain method must be one of"):
        fit_target("vahadane", [reference])
    with pytest.raises(ValueError, match="needs >= 100 tissue pixels"):
        fit_target(method, [glass])


def test_demo_dataset_labels_by_construction(demo):
    meta = json.loads((demo / "demo.json").read_text())
    assert meta["classes"] == list(CLASSES) and len(meta["slides"]) == 4
    assert "FALLBACK" in meta["sources"]["skin"]["source"]
    slide = open_slide(demo / "slides" / "slide_00.tif")
    assert slide.level_dimensions[:2] == ((1024, 1024), (512, 512))
    assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
    labels = np.asarray(Image.open(demo / "masks" / "slide_00.png"))
    assert labels.shape == (512, 512) and set(np.unique(labels)) == {0, 1, 2}
    from_geojson = read_mask(demo / "annotations" / "slide_00.geojson", CLASSES, (512, 512), 2.0, slide_size=(1024, 1024))
    np.testing.assert_array_equal(from_geojson, labels)
    rgb = slide.read_region((0, 0), 1, (512, 512), as_array=True)
    assert rgb[labels == 0].min(axis=-1).mean() > 220 and rgb[labels > 0].min(axis=-1).mean() < 200  # glass vs tissue
    mask, scale = tissue_mask(slide)
    assert scale == 2.0 and abs(mask.mean() - (labels > 0).mean()) < 0.05
    stains = [s["stain"]["scale"] for s in meta["slides"].values()]
    assert len({tuple(s) for s in stains}) == 4  # every slide stained differently
    again = make_demo_dataset(demo.parent / "again", DemoConfig(n_slides=1, size=1024, seed=3), cmu=None)
    assert again["slides"]["slide_00"] == meta["slides"]["slide_00"]  # deterministic from the seed


def test_sheet_splits_by_slide_and_records_problems(demo, tmp_path):
    rows = build_slide_sheet(demo / "slides", demo / "annotations", CLASSES, test_fraction=0.25, val_fraction=0.3)
    write_sheet(rows, tmp_path / "slides.tsv")
    rows = read_sheet(tmp_path / "slides.tsv")
    assert [r["case_id"] for r in rows] == [f"slide_0{i}" for i in range(4)]
    assert all(r["problem"] == "" and r["mpp"] == 0.5 for r in rows)
    splits = {r["case_id"]: split_of(r) for r in rows}
    assert sorted(splits.values()) == ["test", "train", "train", "val"]
    bad = tmp_path / "bad"
    (bad / "ann").mkdir(parents=True)
    write_synthetic_slide(bad / "nompp.tif", 256, mpp=None, min_level_side=256)
    write_synthetic_slide(bad / "fine.tif", 256, mpp=0.5, min_level_side=256)
    write_synthetic_slide(bad / "orphan.tif", 256, mpp=0.5, min_level_side=256)
    tifffile.imwrite(bad / "blank.tif", np.full((256, 256, 3), 245, np.uint8), tile=(128, 128),
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    for name in ("nompp", "fine"):
        (bad / "ann" / f"{name}.geojson").write_text(json.dumps([square(0, 0, 50, 50, "skin")]))
    rows = {r["case_id"]: r for r in build_slide_sheet(bad, bad / "ann", CLASSES, test_fraction=0.0, val_fraction=0.0)}
    assert rows["fine"]["problem"] == ""
    assert "no microns-per-pixel" in rows["nompp"]["problem"] and "datasets.<name>.mpp" in rows["nompp"]["problem"]
    assert rows["orphan"]["problem"] == "" and split_of(rows["orphan"]) == "predict"  # unannotated: predicted only
    assert "no tissue found in slide" in rows["blank"]["problem"] and "blank.tif" in rows["blank"]["problem"]


def test_class_aware_sampling():
    presence = np.zeros((100, 3), bool)
    presence[:, 0] = True
    presence[:90, 1] = True
    presence[95:, 2] = True  # rare class: 5 tiles
    picked = class_aware_sample(presence, 4, np.random.default_rng(0))
    assert presence[picked, 2].sum() == 4 and presence[picked, 1].sum() >= 4 and len(picked) == len(set(picked))
    assert len(class_aware_sample(presence, 50, np.random.default_rng(0))) >= 55


def test_tiles_of_one_slide_at_an_mpp(demo, tmp_path):
    slide, ann = demo / "slides" / "slide_01.tif", demo / "annotations" / "slide_01.geojson"
    target = StainTarget("reinhard", {"lab_mean": [60.0, 30.0, -10.0], "lab_std": [15.0, 10.0, 8.0]})
    table = tile_slide(slide, ann, CLASSES, tmp_path / "slide_01", TileConfig(mpp=1.0, tile=128, per_class=3), target)
    arr = np.load(tmp_path / "slide_01.npy", mmap_mode="r")
    n = len(table["positions"])
    assert arr.shape == (4, n, 128, 128) and arr.dtype == np.float16
    assert table["level"] == 1 and table["mpp"] == pytest.approx(1.0) and 3 <= n <= 9
    truth = np.asarray(Image.open(demo / "masks" / "slide_01.png"))  # level 1 = tiling level
    for i, (y, x) in enumerate(table["positions"]):
        np.testing.assert_array_equal(arr[3, i], truth[y:y + 128, x:x + 128])
    counts = np.array(table["class_pixels"])
    assert ((counts > 0).sum(axis=0) >= 3).all()  # every class in >= per_class tiles
    raw = tile_slide(slide, ann, CLASSES, tmp_path / "raw", TileConfig(mpp=1.0, tile=128, per_class=3))
    assert raw["positions"] == table["positions"]  # same choice; only colours differ
    assert not np.allclose(np.load(tmp_path / "raw.npy")[:3], arr[:3])
    # the common trainer reads them as 2-D slices (context 0)
    from medseg.plan.resolved import slide_task
    from medseg.training.batches import TileSet, make_batch
    from medseg.training.config import FoldJob

    job = FoldJob((str(tmp_path / "slide_01.npy"), str(tmp_path / "raw.npy")), (), str(tmp_path / "fold_0"),
                  slide_task("demo", CLASSES))
    tiles = TileSet(*job.tiles("train"))  # each tile array's table: the .json beside it
    x, y = make_batch(tiles, 0, 0, 4, 0, 0.5, (96, 96), None)
    assert x.shape == (4, 3, 96, 96) and y.shape == (4, 1, 96, 96) and 0 <= x.min() and x.max() <= 1
    assert set(np.unique(y)) <= {0.0, 1.0, 2.0}
    with pytest.raises(ValueError, match="tiles.tile"):
        TileConfig(tile=8)


def test_no_slide_in_two_splits_and_plan_matches_sheet(demo, tmp_path):
    from medseg.wsi.listing import sheet_problems, list_slides

    cfg = {"source": str(demo), "classes": list(CLASSES), "split": {"test_fraction": 0.25, "val_fraction": 0.3}}
    plan = list_slides("demo", cfg)
    rows = build_slide_sheet(demo / "slides", demo / "annotations", CLASSES, test_fraction=0.25, val_fraction=0.3)
    assert {r["case_id"]: split_of(r) for r in rows} == dict(plan.splits)  # parse-time DAG == sheet
    groups = [set(plan.ids(s)) for s in ("train", "val", "test")]
    assert sum(map(len, groups)) == len(set().union(*groups)) == 4  # disjoint, every slide once
    many = list_slides("x", {"source": "demo", "classes": ["a"], "demo": {"n_slides": 40}}, str(tmp_path))
    groups = [set(many.ids(s)) for s in ("train", "val", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert len(groups[2]) == 12 and all(groups)
    write_sheet(rows[:1] + [{**rows[1], "problem": "unreadable"}] + rows[2:], tmp_path / "slides.tsv")
    assert sheet_problems(tmp_path / "slides.tsv") == {rows[1]["case_id"]: "unreadable"}
    assert rows[1]["case_id"] not in plan.without(sheet_problems(tmp_path / "slides.tsv")).ids(split_of(rows[1]))
    with pytest.raises(ValueError, match="must be 'demo' or a folder with slides/"):
        list_slides("y", {"source": str(tmp_path / "nowhere"), "classes": ["a"]})
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(demo / "slides", partial / "slides")
    shutil.copytree(demo / "annotations", partial / "annotations")
    (partial / "annotations" / "slide_02.geojson").unlink()
    plan = list_slides("partial", {**cfg, "source": str(partial)})
    rows = build_slide_sheet(partial / "slides", partial / "annotations", CLASSES, test_fraction=0.25, val_fraction=0.3)
    assert {r["case_id"]: split_of(r) for r in rows} == dict(plan.splits) and plan.splits["slide_02"] == "predict"
    assert "slide_02" not in plan.ids("train") + plan.ids("val") + plan.ids("test")


def test_demo_finds_the_cmu_slide_where_setup_put_it_and_never_downloads(tmp_path, monkeypatch, caplog):
    from medseg.wsi import demo

    monkeypatch.setenv("MEDSEG_DATA_DIR", str(tmp_path))
    (tmp_path / "slides").mkdir()
    svs = tmp_path / "slides" / demo.CMU_FILE
    svs.write_bytes(b"stand-in")
    assert demo.resolve_cmu("auto") == svs and "unexpected checksum" in caplog.text
    assert demo.resolve_cmu("none") is None and demo.resolve_cmu(str(svs)) == svs
    with pytest.raises(InputError, match="missing.svs does not exist"):
        demo.resolve_cmu(str(tmp_path / "missing.svs"))
    monkeypatch.setattr(demo, "default_cmu_paths", lambda: [tmp_path / "elsewhere" / demo.CMU_FILE])
    assert demo.resolve_cmu("auto") is None and "scripts/fetch_demo_slide.sh" in caplog.text


def test_slide_schema_defaults_are_the_slide_recipes():
    """One place for each slide default: the schema file documents the SlideRecipe's (and its dataclasses')."""
    from medseg.plan.check import load_schema
    from medseg.plan.resolved import SlideRecipe

    r = SlideRecipe()
    node = load_schema(with_defaults=False)["properties"]["datasets"]["additionalProperties"]["allOf"][0]["then"]
    props = node["properties"]
    for key in ("split", "tiles", "predict", "evaluation"):
        for name, prop in props[key]["properties"].items():
            assert prop["default"] == getattr(getattr(r, key), name), f"datasets.<slide>.{key}.{name}"
    from medseg.cohort.splits import SplitConfig

    assert r.split.test_fraction == 0.3 != SplitConfig().test_fraction  # slides hold out more than MRI cases
    assert props["stain"]["properties"]["method"]["default"] == r.stain and props["mpp"]["default"] == r.mpp
    assert props["classes"]["default"] == list(r.classes) and props["class_colors"]["default"] == {}


def test_class_colours_from_the_config_else_the_palette():
    from medseg.plan.resolved import resolve_slide_plan
    from medseg.wsi.config import CLASS_PALETTE

    def plan(colours):
        ds = {"kind": "slide", "classes": ["a", "b", "c"], "class_colors": colours}
        return resolve_slide_plan({"datasets": {"x": ds}, "models": {}}, "x")

    assert plan({"b": [1, 2, 3]}).recipe.class_colors == {"a": CLASS_PALETTE[0], "b": (1, 2, 3), "c": CLASS_PALETTE[2]}
    assert plan(None).recipe.class_colors == dict(zip("abc", CLASS_PALETTE[:3]))
    with pytest.raises(ValueError, match=r"datasets\.x\.class_colors names \['z'\], which are not classes"):
        plan({"z": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"datasets\.x\.class_colors\.b must be three integers in \[0, 255\]"):
        plan({"b": [1, 2, 300]})


def test_sheet_default_split_is_the_slide_plans(demo):
    """Without a split, the sheet, the workflow's sheet job and the parse-time listing split the same way."""
    from medseg.plan.resolved import SlideRecipe
    from medseg.wsi.config import SLIDE_SPLIT
    from medseg.wsi.listing import list_slides

    rows = build_slide_sheet(demo / "slides", demo / "annotations", CLASSES)
    explicit = build_slide_sheet(demo / "slides", demo / "annotations", CLASSES, split=SLIDE_SPLIT)
    splits = {r["case_id"]: split_of(r) for r in rows}
    assert splits == {r["case_id"]: split_of(r) for r in explicit} == dict(
        list_slides("demo", {"source": str(demo), "classes": list(CLASSES)}).splits)
    assert sorted(splits.values()).count("test") == round(4 * SlideRecipe().split.test_fraction) == 1
