"""3-D models through predict_volume: windows of the plan's patch, blending that is really used."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.inference.config import InferenceConfig
from medseg.inference.volume import blending, predict_stitched, predict_volume, window
from medseg.models import build_model
from medseg.models.tiramisu3d import Tiramisu3DConfig
from medseg.models.unet3d import UNet3DConfig
from medseg.plan.runs import resolve_run


class TinyNet3D(torch.nn.Module):
    """Two zero-padded 3x3x3 convolutions (receptive radius 2), no stride, no per-window statistics.
    Not a registry network: it runs through the default (stitched) predictor directly."""

    spatial_dims = 3

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.Tanh(),
                                       torch.nn.Conv3d(4, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


VOLUME = np.random.default_rng(3).normal(size=(2, 13, 19, 17)).astype(np.float32)
PATCH = (8, 8, 8)  # the window: the plan's (a 3-D model's training patch unless inference.patch_size says otherwise)


def stitched(net, cfg: InferenceConfig, context: int = 0) -> np.ndarray:
    return predict_stitched([net], VOLUME, context, cfg, "sigmoid")


def _untiled(net: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(VOLUME)[None]))[0].numpy()


def test_stitched_3d_equals_untiled_with_margin():
    net = TinyNet3D().eval()
    full = _untiled(net)
    for mode in ("gaussian", "constant", "pyramid"):
        out = stitched(net, InferenceConfig(patch_size=PATCH, device="cpu", mode=mode, margin=2))
        assert out.shape == full.shape == (3, 13, 19, 17)
        assert np.abs(out - full).max() < 1e-5, mode
    seams = stitched(net, InferenceConfig(patch_size=PATCH, device="cpu", mode="gaussian"))
    assert np.abs(seams - full).max() > 1e-4  # without the margin, the windows' zero padding shows


def test_blending_changes_the_3d_output():
    net = TinyNet3D().eval()
    g = stitched(net, InferenceConfig(patch_size=PATCH, device="cpu", mode="gaussian"))
    c = stitched(net, InferenceConfig(patch_size=PATCH, device="cpu", mode="constant"))
    assert np.abs(g - c).max() > 1e-3
    # the windows really are the plan's 8^3 patch (a whole-volume window would not blend at all)
    assert window(net, VOLUME.shape[1:], InferenceConfig(patch_size=PATCH)) == (8, 8, 8)
    assert window(net, VOLUME.shape[1:], InferenceConfig(patch_size=(4, 8, 6))) == (4, 8, 6)
    with pytest.raises(ValueError, match="a 3-D network needs a 3-D window"):
        window(net, VOLUME.shape[1:], InferenceConfig())
    # inference.patch_size with 2 values is the 2-D models' window: a 3-D model's is its training patch; clipped
    run = resolve_run({"models": {"u": {"arch": "unet3d", "patch_size": list(PATCH)}},
                       "inference": {"patch_size": [64, 64]}}, "u")
    assert run.inference.patch_size == PATCH and window(net, (5, 40, 40), run.inference) == (5, 8, 8)


def test_model_default_blending_when_mode_unset():
    tira = build_model(Tiramisu3DConfig(in_channels=2, out_channels=3, first_features=4,
                                        growth_rate=2, layers_per_block=(1, 1, 1), dropout=0.0)).eval()
    unet = build_model(UNet3DConfig(in_channels=2, out_channels=3, features=(4, 8), seg_levels=1)).eval()
    assert blending(tira, InferenceConfig()) == "constant" and blending(unet, InferenceConfig()) == "gaussian"
    assert blending(tira, InferenceConfig(mode="pyramid")) == "pyramid"
    # the plan resolves the same defaults
    modes = {a: resolve_run({"models": {"m": {"arch": a}}}, "m").inference.mode for a in ("tiramisu3d", "unet3d")}
    assert modes == {"tiramisu3d": "constant", "unet3d": "gaussian"}
    default = predict_volume([tira], VOLUME, 0, InferenceConfig(patch_size=PATCH, device="cpu"))
    const = predict_volume([tira], VOLUME, 0, InferenceConfig(patch_size=PATCH, device="cpu", mode="constant"))
    gauss = predict_volume([tira], VOLUME, 0, InferenceConfig(patch_size=PATCH, device="cpu", mode="gaussian"))
    np.testing.assert_array_equal(default, const)
    assert np.abs(default - gauss).max() > 1e-4


def test_patch_size_checks():
    net = TinyNet3D().eval()
    with pytest.raises(ValueError, match="no context"):
        stitched(net, InferenceConfig(patch_size=PATCH, device="cpu"), context=1)
    with pytest.raises(ValueError, match="not a network of the model registry"):  # predict_volume: registry networks
        predict_volume([net], VOLUME, 0, InferenceConfig(patch_size=PATCH, device="cpu"))
    with pytest.raises(ValueError, match="inference.patch_size must be"):
        InferenceConfig(patch_size=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="mode"):
        InferenceConfig(mode="median")

    class Flat(torch.nn.Module):
        spatial_dims = 2

    with pytest.raises(ValueError, match=r"2-D/2.5-D model must be \(h, w\)"):
        window(Flat(), (5, 20, 20), InferenceConfig(patch_size=(4, 8, 8)))
    assert window(Flat(), (5, 20, 20), InferenceConfig(patch_size=(8, 8))) == (1, 8, 8)
    assert window(Flat(), (5, 20, 24), InferenceConfig()) == (1, 20, 24)
