"""Oracle tests of the stitching engine: identity / x+1 / conv-net predictors (medseg.stitch)."""
from __future__ import annotations

import pytest
import torch

from medseg.stitch.accumulator import StitchAccumulator
from medseg.stitch.inference import sliding_window_inference
from medseg.stitch.weights import WEIGHT_MODES

SHAPES = {  # name: (image shape (C, *spatial), patch)
    "2d": ((2, 23, 30), (8, 8)),
    "3d": ((1, 9, 12, 14), (4, 6, 6)),
    "small": ((1, 5, 7), (8, 8)),  # smaller than a patch: padded and cropped back
    "small3d": ((1, 3, 20, 5), (4, 8, 8)),
}


@pytest.mark.parametrize("backend", ["memory", "zarr"])
@pytest.mark.parametrize("mode", sorted(WEIGHT_MODES))
@pytest.mark.parametrize("case", sorted(SHAPES))
def test_identity_and_plus_one_reproduce_input(case, mode, backend):
    shape, patch = SHAPES[case]
    image = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    out = sliding_window_inference(image, lambda x: x, patch, overlap=0.5, mode=mode, batch_size=3, backend=backend)
    assert out.shape == image.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)
    out = sliding_window_inference(image, lambda x: x + 1, patch, overlap=0.3, mode=mode, backend=backend)
    torch.testing.assert_close(out, image + 1, atol=1e-5, rtol=0)


def _net(ndim: int) -> torch.nn.Module:
    conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
    torch.manual_seed(0)  # two 3x3 convs: receptive field 5 (radius 2), zero padding
    return torch.nn.Sequential(conv(2, 4, 3, padding=1), torch.nn.Tanh(), conv(4, 3, 3, padding=1)).eval()


@pytest.mark.parametrize("mode", sorted(WEIGHT_MODES))
@pytest.mark.parametrize(("shape", "patch"), [((2, 40, 53), (16, 16)), ((2, 14, 19, 17), (8, 8, 8))])
def test_conv_net_matches_untiled_forward(shape, patch, mode):
    image = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    net = _net(len(patch))
    with torch.no_grad():
        full = net(image[None])[0]
    out = sliding_window_inference(image, net, patch, overlap=0.5, mode=mode, batch_size=4, margin=2)
    assert out.shape == full.shape
    assert (out - full).abs().max() < 1e-5
    # without dropping the window margins the truncated receptive field shows at the seams
    seams = sliding_window_inference(image, net, patch, overlap=0.5, mode=mode, margin=0)
    assert (seams - full).abs().max() > 1e-4


def test_slicewise_2d_net_on_volume():
    image = torch.randn(2, 5, 20, 24, generator=torch.Generator().manual_seed(2))
    net = _net(2)

    def predictor(x):  # (B, C, 1, h, w) -> 2-D net -> (B, K, 1, h, w)
        return net(x[:, :, 0])[:, :, None]

    with torch.no_grad():
        full = torch.stack([net(image[:, d][None])[0] for d in range(image.shape[1])], dim=1)
    for backend in ("memory", "zarr"):
        out = sliding_window_inference(image, predictor, (1, 12, 12), overlap=0.5, margin=2, backend=backend)
        assert (out - full).abs().max() < 1e-5


def test_tta_mirroring():
    image = torch.rand(1, 12, 10, generator=torch.Generator().manual_seed(3))
    calls = []

    def predictor(x):
        calls.append(1)
        return x * 2

    out = sliding_window_inference(image, predictor, (8, 8), overlap=0.5, tta=True, batch_size=100)
    torch.testing.assert_close(out, image * 2)
    assert len(calls) == 4  # one batch, 2**2 mirrorings
    # a direction-dependent predictor is averaged with its mirror images
    ramp = torch.arange(8.0)

    def shifted(x):
        return x + ramp

    out = sliding_window_inference(torch.zeros(1, 8, 8), shifted, (8, 8), tta=True)
    torch.testing.assert_close(out, torch.full((1, 8, 8), 3.5))


def test_devices_and_auto_backend(tmp_path):
    image = torch.rand(1, 16, 16)
    out = sliding_window_inference(image, lambda x: x, (8, 8), device="cpu", out_device="cpu", progress=True,
                                   memory_limit_bytes=0)  # auto -> zarr
    torch.testing.assert_close(out, image)
    out.mul_(2)  # a normal tensor, not an inference-mode one
    acc = StitchAccumulator((16, 16), (8, 8), memory_limit_bytes=0)
    with pytest.raises(ValueError, match="zarr_path"):
        acc.add_batch(torch.zeros(1, 1, 8, 8), [(0, 0)])
    acc = StitchAccumulator((16, 16), (8, 8), memory_limit_bytes=16 * 16 * 4)
    acc.add_batch(torch.zeros(1, 1, 8, 8), [(0, 0)])
    assert acc.backend == "memory"
    acc = StitchAccumulator((16, 16), (8, 8), memory_limit_bytes=16 * 16 * 4 - 1, zarr_path=tmp_path / "z.zarr")
    acc.add_batch(torch.zeros(1, 1, 8, 8), [(0, 0)])
    assert acc.backend == "zarr" and (tmp_path / "z.zarr").is_dir()


def test_non_finite_output_names_window():
    image = torch.rand(1, 16, 16)

    def bad(x):
        y = x.clone()
        y[-1, 0, 3, 3] = float("nan")
        return y

    with pytest.raises(ValueError, match=r"NaN or infinite values for the window starting at \(0, 4\)"):
        sliding_window_inference(image, bad, (8, 8), overlap=0.5, batch_size=2)
    acc = StitchAccumulator((16, 16), (8, 8))
    with pytest.raises(ValueError, match=r"window starting at \(8, 8\)"):
        acc.add_batch(torch.tensor([1.0, float("inf")]).view(2, 1, 1, 1).expand(2, 1, 8, 8), [(0, 0), (8, 8)])
    # finite values whose float32 sum overflows are accepted
    acc.add_batch(torch.full((2, 1, 8, 8), 3e38), [(0, 0), (8, 8)])


def test_accumulator_coverage_and_shapes():
    acc = StitchAccumulator((8, 12), (4, 4), mode="constant")
    acc.add_batch(torch.ones(1, 2, 4, 4), [(0, 0)])
    with pytest.raises(ValueError, match="channels"):
        acc.add_batch(torch.ones(1, 3, 4, 4), [(4, 4)])
    with pytest.raises(ValueError, match="outside"):
        acc.add_batch(torch.ones(1, 2, 4, 4), [(6, 0)])
    with pytest.raises(ValueError, match="logits must have shape"):
        acc.add_batch(torch.ones(1, 2, 4, 5), [(0, 0)])
    with pytest.raises(ValueError, match=r"voxel \(0, 4\) is not covered"):
        acc.finalize()
    with pytest.raises(ValueError, match="no windows"):
        StitchAccumulator((8, 12), (4, 4)).finalize()


def test_accumulator_uncovered_zero(tmp_path):
    for backend in ("memory", "zarr"):
        acc = StitchAccumulator((8, 12), (4, 4), allow_uncovered=True, backend=backend, zarr_path=tmp_path / "a.zarr",
                                chunks=(3, 5))
        acc.add_batch(torch.full((2, 1, 4, 4), 7.0), [(0, 0), (2, 2)])
        out = torch.as_tensor(acc.finalize()[...])
        assert acc.backend == backend
        expected = torch.zeros(1, 8, 12)
        expected[0, 0:4, 0:4] = expected[0, 2:6, 2:6] = 7.0
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"overlap": 1.0}, "overlap"),
    ({"patch_size": (8,)}, "patch_size"),
    ({"patch_size": (0, 8)}, "patch_size"),
    ({"mode": "hann"}, "mode"),
    ({"batch_size": 0}, "batch_size"),
    ({"backend": "disk"}, "backend"),
    ({"sigma_scale": -1.0}, "sigma_scale"),
    ({"margin": 4}, "margin"),
    ({"image": torch.zeros(5)}, "image"),
    ({"predictor": "net"}, "predictor"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    args = {"image": torch.zeros(1, 16, 16), "predictor": lambda x: x, "patch_size": (8, 8)} | kwargs
    with pytest.raises(ValueError, match=name):
        sliding_window_inference(**args)
