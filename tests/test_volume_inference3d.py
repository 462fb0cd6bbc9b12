"""3-D models through predict_volume: windows of the model's patch, blending that is really used."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.models import Tiramisu3DConfig, UNet3DConfig, build_model
from medseg.volume_inference import InferenceConfig, blending, predict_volume, window


class TinyNet3D(torch.nn.Module):
    """Two zero-padded 3x3x3 convolutions (receptive radius 2), no stride, no per-window statistics."""

    spatial_dims = 3
    patch_size = (8, 8, 8)
    default_blending = "gaussian"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.Tanh(),
                                       torch.nn.Conv3d(4, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


VOLUME = np.random.default_rng(3).normal(size=(2, 13, 19, 17)).astype(np.float32)


def _untiled(net: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(VOLUME)[None]))[0].numpy()


def test_stitched_3d_equals_untiled_with_margin():
    net = TinyNet3D().eval()
    full = _untiled(net)
    for mode in ("gaussian", "constant", "pyramid"):
        out = predict_volume([net], VOLUME, 0, InferenceConfig(device="cpu", mode=mode, margin=2))
        assert out.shape == full.shape == (3, 13, 19, 17)
        assert np.abs(out - full).max() < 1e-5, mode
    seams = predict_volume([net], VOLUME, 0, InferenceConfig(device="cpu", mode="gaussian"))
    assert np.abs(seams - full).max() > 1e-4  # without the margin, the windows' zero padding shows


def test_blending_changes_the_3d_output():
    net = TinyNet3D().eval()
    g = predict_volume([net], VOLUME, 0, InferenceConfig(device="cpu", mode="gaussian"))
    c = predict_volume([net], VOLUME, 0, InferenceConfig(device="cpu", mode="constant"))
    assert np.abs(g - c).max() > 1e-3
    # the windows really are the model's 8^3 patch (a whole-volume window would not blend at all)
    assert window(net, VOLUME.shape[1:], InferenceConfig()) == (8, 8, 8)
    assert window(net, VOLUME.shape[1:], InferenceConfig(patch_size=(4, 8, 6))) == (4, 8, 6)
    assert window(net, (5, 40, 40), InferenceConfig(patch_size=(64, 64))) == (5, 8, 8)  # 2 values: 2-D models'; clipped


def test_model_default_blending_when_mode_unset():
    tira = build_model(Tiramisu3DConfig(in_channels=2, out_channels=3, patch_size=(8, 8, 8), first_features=4,
                                        growth_rate=2, layers_per_block=(1, 1, 1), dropout=0.0)).eval()
    unet = build_model(UNet3DConfig(in_channels=2, out_channels=3, patch_size=(8, 8, 8), features=(4, 8), seg_levels=1)).eval()
    assert blending(tira, InferenceConfig()) == "constant" and blending(unet, InferenceConfig()) == "gaussian"
    assert blending(tira, InferenceConfig(mode="pyramid")) == "pyramid"
    default = predict_volume([tira], VOLUME, 0, InferenceConfig(device="cpu"))
    const = predict_volume([tira], VOLUME, 0, InferenceConfig(device="cpu", mode="constant"))
    gauss = predict_volume([tira], VOLUME, 0, InferenceConfig(device="cpu", mode="gaussian"))
    np.testing.assert_array_equal(default, const)
    assert np.abs(default - gauss).max() > 1e-4


def test_patch_size_checks():
    net = TinyNet3D().eval()
    with pytest.raises(ValueError, match="no context"):
        predict_volume([net], VOLUME, 1, InferenceConfig(device="cpu"))
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
