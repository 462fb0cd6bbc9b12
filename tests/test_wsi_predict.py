"""Slide branch outputs: medseg checkpoints as slide predictors, predicted GeoJSON, per-class evaluation."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from medseg.cli import main
from medseg.io import InputError
from medseg.models.unet import ModelConfig
from medseg.models import build_model
from medseg.wsi.annotations import rasterize, read_geojson
from medseg.wsi.evaluate import class_metrics, evaluate_labels, evaluate_slide, match_objects, plot_outlines
from medseg.wsi.outputs import AREA_PX, AREA_UM2, channel_names, probabilities_to_labels, write_prediction_geojson
from medseg.wsi.predictors import load_checkpoint_predictor, load_predictor, task_classes, task_kind
from medseg.wsi.synthetic import write_synthetic_slide

MODEL = ModelConfig(encoder="resnet10t", in_channels=3, out_channels=3, decoder_channels=(16, 16, 8, 8, 8))


def save_checkpoint(path: Path, task: dict | None, mc: ModelConfig = MODEL) -> Path:
    torch.manual_seed(0)
    model = build_model(mc)
    meta = {"model_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(mc).items()},
            "modalities": ["R", "G", "B"], "context": 1}
    if task is not None:
        meta["task"] = task
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)
    return path


def fake_prediction(path: Path, prob: np.ndarray, mpp: float = 1.0, downsample: float = 2.0) -> Path:
    """A probabilities.zarr like stitch_slide's: level "0" and a 2x mean-pooled level "1"."""
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", data=prob.astype(np.float32))
    k, h, w = prob.shape
    group.create_array("1", data=prob.reshape(k, h // 2, 2, w // 2, 2).mean(axis=(2, 4)).astype(np.float32))
    group.attrs.update(mpp=mpp, slide_downsample=downsample)
    return path


def test_checkpoint_predictor_activation_from_task(tmp_path):
    x = torch.rand(2, 3, 64, 64)
    labels = save_checkpoint(tmp_path / "l" / "model.pt", {"target_kind": "labels", "labels": {"a": 1, "b": 2}})
    predict, meta = load_checkpoint_predictor(labels)
    assert task_kind(meta) == "labels"
    with torch.inference_mode():
        p = predict(x)
    assert p.shape == (2, 3, 64, 64)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(2, 64, 64))
    legacy = save_checkpoint(tmp_path / "r" / "model.pt", None)  # no task: BraTS-era checkpoint -> sigmoid
    with torch.inference_mode():
        q = load_predictor(str(legacy))(x)
        model = build_model(MODEL)
        model.load_state_dict(torch.load(legacy, weights_only=True)["state_dict"])
        torch.testing.assert_close(q, torch.sigmoid(model.eval()(x)))
    assert task_kind({"task": "regions"}) == "regions"
    from medseg.tasks.definition import Task

    task = Task("slides", ("R", "G", "B"), {"skin": 1, "colon": 2}, recipe="generic").to_dict()  # what train() saves
    assert task_kind({"task": task}) == "labels" and task_classes({"task": task}) == ["skin", "colon"]
    with pytest.raises(ValueError, match="target_kind must be"):
        task_kind({"task": {"target_kind": "boxes"}})
    four = save_checkpoint(tmp_path / "m" / "model.pt", None, dataclasses.replace(MODEL, in_channels=4))
    with pytest.raises(InputError, match="takes 4 input channels; slides give 3"):
        load_predictor(str(four))


def test_stitch_slide_with_a_medseg_checkpoint(tmp_path):
    slide = write_synthetic_slide(tmp_path / "s.tif", 512, mpp=0.5, min_level_side=256)
    model = save_checkpoint(tmp_path / "run" / "model.pt", {"target_kind": "labels", "labels": {"a": 1, "b": 2}})
    (tmp_path / "run" / "stain.json").write_text(json.dumps(
        {"method": "reinhard", "params": {"lab_mean": [55.0, 25.0, -8.0], "lab_std": [12.0, 9.0, 6.0]}}))
    out = tmp_path / "pred"
    assert main(["stitch-slide", str(slide), "--out", str(out), "--predictor", str(model), "--tile", "128",
                 "--mpp", "1.0", "--batch-size", "4"]) == 0
    group = zarr.open_group(str(out / "probabilities.zarr"), mode="r")
    prob = group["0"][...]
    assert prob.shape == (3, 256, 256) and group.attrs["stain"] == "reinhard"
    covered = prob.sum(axis=0) > 0
    np.testing.assert_allclose(prob[:, covered].sum(axis=0), 1.0, atol=1e-4)
    with tifffile.TiffFile(out / "probabilities.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].shape == (3, 256, 256)
        assert ome_channels(tif) == [("background", (128, 128, 128)), ("a", (230, 159, 0)), ("b", (86, 180, 233))]
    assert group.attrs["channels"] == ["background", "a", "b"]
    names = {f["properties"]["classification"]["name"] for f in read_geojson(out / "predictions.geojson")}
    assert names <= {"a", "b"}


def ome_channels(tif: tifffile.TiffFile) -> list[tuple[str, tuple[int, int, int]]]:
    """(Name, RGB) of each channel, read back from the file's OME-XML."""
    channels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]["Channel"]
    return [(c["Name"], tuple(int(c["Color"]) % 2**32 >> s & 255 for s in (24, 16, 8))) for c in channels]


def test_workflow_prediction_names_channels_and_colours_classes_from_the_recipe(tmp_path, monkeypatch):
    """predict_slide: the recipe's class colours in the GeoJSON and the TIFF, its class names on the channels."""
    from medseg.wsi import predictors
    from medseg.plan.resolved import SlideRecipe
    from medseg.wsi.config import SlideStitchConfig
    from medseg.wsi.stitch_slide import predict_slide

    slide = write_synthetic_slide(tmp_path / "s.tif", 512, mpp=0.5, min_level_side=256)
    model = save_checkpoint(tmp_path / "run" / "model.pt", {"target_kind": "labels", "labels": {"gland": 1, "fat": 2}})
    recipe = SlideRecipe(classes=("gland", "fat"), class_colors={"fat": (10, 20, 30)},
                         predict=SlideStitchConfig(tile=128, mpp=1.0, device="cpu"))
    assert recipe.class_colors == {"gland": (230, 159, 0), "fat": (10, 20, 30)}  # the palette fills the rest
    (tmp_path / "stain.json").write_text(json.dumps({"method": "none"}))

    def dark_gland_pale_fat(x: torch.Tensor) -> torch.Tensor:  # probabilities: both classes on the tissue
        grey = x.mean(dim=1)
        return torch.stack([torch.full_like(grey, 0.2), (grey < 0.7) * 0.8, (grey >= 0.7) * 0.8], dim=1)

    monkeypatch.setattr(predictors, "load_checkpoint_predictor", lambda *a, **k: (dark_gland_pale_fat, {
        "task": {"target_kind": "labels", "labels": {"gland": 1, "fat": 2}}}))
    predict_slide(str(slide), str(model), str(tmp_path / "stain.json"), recipe, str(tmp_path / "p" / "probabilities.ome.tif"))
    with tifffile.TiffFile(tmp_path / "p" / "probabilities.ome.tif") as tif:
        assert ome_channels(tif) == [("background", (128, 128, 128)), ("gland", (230, 159, 0)), ("fat", (10, 20, 30))]
    features = read_geojson(tmp_path / "p" / "predictions.geojson")
    assert {f["properties"]["classification"]["name"] for f in features} == {"gland", "fat"}
    for f in features:
        cls = f["properties"]["classification"]
        assert cls["color"] == list(recipe.class_colors[cls["name"]])


def test_prediction_geojson_is_the_label_map(tmp_path):
    rng = np.random.default_rng(0)
    truth = np.zeros((64, 96), np.uint8)
    truth[8:40, 10:50] = 1
    truth[20:30, 20:30] = 2  # a hole in class 1 filled by class 2
    truth[45:60, 60:90] = 2
    prob = np.eye(3)[truth].transpose(2, 0, 1) * 0.8 + rng.uniform(0, 0.1, (3, *truth.shape))
    np.testing.assert_array_equal(probabilities_to_labels(prob), truth)
    zpath = fake_prediction(tmp_path / "probabilities.zarr", prob, downsample=2.0)
    summary = write_prediction_geojson(zpath, tmp_path / "p.geojson", ["a", "b"], max_side=100, min_area_px=1)
    assert summary["zarr_level"] == 0 and summary["polygons"] == {"a": 1, "b": 2}
    features = read_geojson(tmp_path / "p.geojson")
    back = rasterize(features, ["a", "b"], truth.shape, 2.0)  # level-0 coordinates
    np.testing.assert_array_equal(back, truth)
    # QuPath's places: measurements under properties.measurements, colour in the classification
    by_class = {}
    for f in features:
        props = f["properties"]
        assert set(props) == {"objectType", "classification", "measurements"}
        by_class.setdefault(props["classification"]["name"], []).append(props["measurements"])
        assert props["classification"]["color"] == [[230, 159, 0], [86, 180, 233]][props["classification"]["name"] == "b"]
    # areas of the polygons in level-0 pixels (2x the traced level). The outline joins pixel-edge midpoints
    # (marching squares), so a w x h rectangle's polygon is w * h - 4/8 px: b is 10 x 10 and 15 x 30; a is
    # 32 x 40 with a 10 x 10 hole (its ring loses the same 1/2 px), 1180 px exactly
    assert [m[AREA_PX] for m in by_class["a"]] == [pytest.approx((32 * 40 - 10 * 10) * 4)]
    assert sorted(m[AREA_PX] for m in by_class["b"]) == [pytest.approx((100 - 0.5) * 4), pytest.approx((450 - 0.5) * 4)]
    assert by_class["a"][0][AREA_UM2] == pytest.approx(1180 * 4 * 0.5**2)  # level-0 mpp: 1.0 mpp / downsample 2
    coloured = write_prediction_geojson(zpath, tmp_path / "c.geojson", {"a": (1, 2, 3), "b": (4, 5, 6)}, min_area_px=1)
    assert coloured["polygons"] == {"a": 1, "b": 2}
    assert {tuple(f["properties"]["classification"]["color"]) for f in read_geojson(tmp_path / "c.geojson")} == \
        {(1, 2, 3), (4, 5, 6)}
    assert channel_names(["a", "b"], "labels", 3) == ["background", "a", "b"]
    assert channel_names(["a", "b"], "regions", 2) == ["a", "b"] and channel_names(None, "labels", 2) == ["channel 0",
                                                                                                            "channel 1"]
    regions = np.stack([truth == 1, truth == 2]).astype(float) * 0.9
    np.testing.assert_array_equal(probabilities_to_labels(regions, "regions"), truth)
    with pytest.raises(ValueError, match="classes must name the model's 2 labels"):
        write_prediction_geojson(zpath, tmp_path / "x.geojson", ["a"])


def test_class_metrics_by_hand():
    ref = np.zeros((10, 10), bool)
    pred = np.zeros((10, 10), bool)
    ref[0:4, 0:4] = True  # 16 px
    pred[0:4, 2:6] = True  # 16 px, 8 shared
    m = class_metrics(ref, pred, min_object_px=1)
    assert (m["dice"], m["iou"], m["sensitivity"], m["precision"]) == (0.5, 8 / 24, 0.5, 0.5)
    assert m["n_ref_objects"] == 1 and m["n_detected_objects"] == 0  # IoU 1/3 < 0.5
    assert class_metrics(ref, ref, min_object_px=1)["n_detected_objects"] == 1
    empty = class_metrics(np.zeros((4, 4), bool), np.zeros((4, 4), bool))
    assert (empty["edge_case"], empty["dice"], empty["object_f1"]) == ("both_empty", 1.0, 1.0)
    objects = np.zeros((20, 20), bool)
    objects[1:5, 1:5] = objects[10:14, 10:14] = objects[17:19, 1:3] = True  # two objects + one under 16 px
    found = objects.copy()
    found[10:14, 10:14] = False
    assert match_objects(objects, found, min_object_px=16) == {"n_ref_objects": 2, "n_pred_objects": 1,
                                                                "n_detected_objects": 1, "object_f1": 2 / 3}
    res = evaluate_labels(ref.astype(np.uint8), pred.astype(np.uint8), ["a"], "s", 2.0)
    assert res["slide"]["pixel_accuracy"] == pytest.approx(1 - 16 / 100)
    assert json.loads(json.dumps(res)) == res  # the results JSON can hold it


def test_evaluate_slide_at_an_mpp_and_thumbnail(tmp_path):
    truth = np.zeros((64, 64), np.uint8)
    truth[8:40, 8:40] = 1
    truth[44:60, 20:60] = 2
    from medseg.wsi.annotations import mask_to_geojson

    mask_to_geojson(truth, ["a", "b"], tmp_path / "ref.geojson", downsample=2.0)  # level 1 of a 128 px slide
    pred = truth.copy()
    pred[8:40, 8:24] = 0  # half of class a missed
    zpath = fake_prediction(tmp_path / "probabilities.zarr", np.eye(3)[pred].transpose(2, 0, 1), mpp=1.0)
    res, ref, got = evaluate_slide(zpath, tmp_path / "ref.geojson", ["a", "b"], "s", eval_mpp=1.0,
                                   slide_size=(128, 128))
    np.testing.assert_array_equal(ref, truth)
    assert res["labels"]["a"]["dice"] == pytest.approx(2 * 512 / (1024 + 512)) and res["labels"]["b"]["dice"] == 1.0
    assert res["settings"]["mpp"] == 1.0
    coarse, _, _ = evaluate_slide(zpath, tmp_path / "ref.geojson", ["a", "b"], "s", eval_mpp=2.0)
    assert coarse["shape"] == [32, 32] and coarse["settings"]["mpp"] == 2.0
    rgb = np.full((128, 128, 3), 240, np.uint8)
    plot_outlines(rgb, ref, got, ["a", "b"], tmp_path / "t.png", "s")
    assert (tmp_path / "t.png").stat().st_size > 1000
