"""EDPCNN (Nguyen & Ray): star sampling, closed-contour DP vs brute force, rendering, SG training."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from medseg.models.unet import ModelConfig
from medseg.models.edpcnn import EDPCNN, EDPCNNConfig, build_edpcnn
from medseg.training.edpcnn_step import _sg_ce, fit_sg, make_optimizers, train_step
from medseg.models.star_dp import (
    closed_contour_dp,
    contour_energy,
    indices_to_radii,
    mask_to_star_indices,
    radial_cost,
    render_contour,
    sample_star,
    smooth_indices,
)


def _eq2_energy(cost: np.ndarray, v: tuple[int, ...], delta: int) -> float:
    """Eq. (1)-(2) written out literally, independent of the library's vectorised code."""
    n = len(v)
    total = 0.0
    for i in range(n):
        j = (i + 1) % n
        if abs(v[i] - v[j]) > delta:
            return math.inf
        total += cost[i, v[i]] + cost[j, v[j]]
    return total


def _brute_force(cost: np.ndarray, delta: int) -> tuple[float, list[tuple[int, ...]]]:
    n, m = cost.shape
    energies = {v: _eq2_energy(cost, v, delta) for v in itertools.product(range(m), repeat=n)}
    best = min(energies.values())
    return best, [v for v, e in energies.items() if e == best]


@pytest.mark.parametrize("delta", [0, 1, 2])
def test_dp_is_the_brute_force_optimum_on_5_rays_x_4_points(delta):
    rng = np.random.default_rng(delta)
    cost = rng.normal(size=(12, 5, 4))
    idx = closed_contour_dp(torch.from_numpy(cost), delta).numpy()
    for b in range(len(cost)):
        best, argbest = _brute_force(cost[b], delta)
        assert _eq2_energy(cost[b], tuple(idx[b]), delta) == pytest.approx(best, abs=1e-12)
        assert tuple(idx[b]) in argbest


def test_dp_hand_made_map_where_the_closing_pair_matters():
    # 4 rays x 4 points; each ray alone prefers a jagged contour 0,3,0,3 (closing pair 3 -> 0 too).
    # With delta=1 the best closed contour, found by hand: all rays at 1 or 2. Cost per ray:
    cost = torch.tensor([[[-5.0, -1.0, -1.0, 0.0],
                          [0.0, -1.0, -1.0, -5.0],
                          [-5.0, -1.0, -1.0, 0.0],
                          [0.0, -1.0, -1.0, -5.0]]])
    idx = closed_contour_dp(cost, 1)
    e = float(contour_energy(cost, idx, 1))
    best, _ = _brute_force(cost[0].numpy(), 1)
    assert e == pytest.approx(best)
    # an open chain could do 0,1,2,3 (-5-1-1-5 per ray pair sum); closing 3 -> 0 is forbidden
    assert abs(int(idx[0, -1]) - int(idx[0, 0])) <= 1
    assert float(contour_energy(cost, torch.tensor([[0, 1, 2, 3]]), 1)) == math.inf


def test_smoothness_constraint_holds_on_every_output_closing_pair_included():
    torch.manual_seed(0)
    for delta in (0, 1, 2, 5):
        cost = torch.randn(64, 23, 17) * 3
        idx = closed_contour_dp(cost, delta)
        assert idx.min() >= 0 and idx.max() < 17
        jumps = (idx - torch.roll(idx, -1, dims=1)).abs()
        assert int(jumps.max()) <= delta
        assert torch.isfinite(contour_energy(cost, idx, delta)).all()
        # the unconstrained per-ray argmin violates it, so the constraint is active
        assert int((cost.argmin(-1) - torch.roll(cost.argmin(-1), -1, 1)).abs().max()) > delta


def test_dp_finds_the_boundary_of_a_disc_map():
    h = w = 64
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    centre = torch.tensor([[30.0, 33.0]])
    r0 = 14.0
    dist = ((yy - 30) ** 2 + (xx - 33) ** 2).sqrt()
    maps = torch.sigmoid((r0 - dist) * 2)[None]  # high inside, low outside
    g = sample_star(maps, centre, n_rays=32, n_points=24, radius=24.0)
    assert g.shape == (1, 32, 25)
    idx = closed_contour_dp(radial_cost(g), 2)
    radii = indices_to_radii(idx, 24, 24.0)
    assert (radii - r0).abs().max() <= 0.5 + 1e-6  # boundary found to within half a sample on every ray


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def test_rendered_circle_contour_is_a_disc():
    h, w, cy, cx, r = 80, 72, 38.3, 35.6, 22.5
    n_points, radius = 40, 40.0
    v = r * n_points / radius - 0.5  # float index whose radius is r
    idx = torch.full((1, 64), v)
    mask = render_contour(torch.tensor([[cy, cx]]), idx, n_points, radius, h, w)[0].numpy()
    ref = _disc(h, w, cy, cx, r)
    dice = 2 * (mask & ref).sum() / (mask.sum() + ref.sum())
    assert dice > 0.98
    assert abs(mask.sum() - math.pi * r**2) / (math.pi * r**2) < 0.03


def test_mask_to_star_indices_of_a_disc_and_roundtrip():
    h = w = 64
    mask = torch.from_numpy(_disc(h, w, 31.0, 29.0, 12.0))[None]
    centre = torch.tensor([[31.0, 29.0]])
    idx = mask_to_star_indices(mask, centre, 16, 30, 30.0, angle_offset=torch.tensor([0.3]))
    radii = indices_to_radii(idx, 30, 30.0)
    assert (radii - 12.0).abs().max() <= 1.0
    back = render_contour(centre, idx, 30, 30.0, h, w, angle_offset=torch.tensor([0.3]))[0]
    dice = 2 * (back & mask[0]).sum() / (back.sum() + mask[0].sum())
    assert float(dice) > 0.9


def test_circular_smoothing_keeps_constants_and_wraps():
    x = torch.tensor([[3.0] * 10])
    assert torch.allclose(smooth_indices(x, 5), x)
    y = torch.zeros(1, 10)
    y[0, 0] = 5.0
    s = smooth_indices(y, 5)
    assert s[0, 9] == pytest.approx(1.0) and s[0, 2] == pytest.approx(1.0) and s[0, 3] == 0.0
    assert float(s.sum()) == pytest.approx(5.0)


def _tiny_cfg(**kw) -> EDPCNNConfig:
    unet = ModelConfig(encoder="resnet10t", in_channels=1, out_channels=1, decoder_channels=(16, 16, 8, 8, 8))
    base = dict(unet=unet, n_rays=12, n_points=10, radius_px=10.0, sg_steps=3, noise_samples=2, sg_base_channels=4)
    base.update(kw)
    return EDPCNNConfig(**base)


def test_sg_fit_reduces_the_sg_error_on_a_fixed_batch():
    torch.manual_seed(0)
    model = EDPCNN(_tiny_cfg(sg_lr=1e-2, sg_steps=5, noise_samples=4, noise_sigma=0.0))
    _, opt_sg = make_optimizers(model)
    cost = torch.randn(6, 12, 10)
    target = torch.round(model.dp_indices(cost)).long()

    def error() -> float:
        model.sg.train()  # batch statistics, as in fitting
        with torch.no_grad():
            return float(_sg_ce(model.sg(cost), target))

    before = error()
    for _ in range(8):
        fit_sg(model, cost, opt_sg, torch.Generator().manual_seed(1))
    after = error()
    assert after < 0.5 * before


def test_train_step_moves_the_unet_and_returns_finite_losses():
    torch.manual_seed(0)
    model = EDPCNN(_tiny_cfg())
    opt_u, opt_sg = make_optimizers(model)
    x = torch.randn(3, 1, 32, 32)
    masks = torch.from_numpy(np.stack([_disc(32, 32, 16, 15, 6)] * 3))
    before = [p.detach().clone() for p in model.unet.parameters()]
    out = train_step(model, x, masks, opt_u, opt_sg, torch.Generator().manual_seed(0))
    assert set(out) >= {"sg_loss", "sg_gt_loss", "centre_loss", "loss"}
    assert all(math.isfinite(v) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.unet.parameters()))


class _FixedMap(nn.Module):
    def __init__(self, maps: torch.Tensor) -> None:
        super().__init__()
        self.maps = maps

    def forward(self, x):
        return self.maps[:, None]


def test_centre_comes_from_the_unet_output_and_mask_follows_it():
    h, w = 48, 56
    big = _disc(h, w, 20.0, 34.0, 9.0)
    small = _disc(h, w, 40.0, 8.0, 3.0)  # a smaller blob elsewhere must not attract the centre
    logits = np.where(big | small, 4.0, -4.0).astype(np.float32)
    maps = torch.from_numpy(np.stack([logits, np.full((h, w), -4.0, np.float32)]))
    model = EDPCNN(_tiny_cfg(n_rays=32, n_points=20, radius_px=20.0))
    model.unet = _FixedMap(maps)
    centres, found = model.centres_from_maps(maps)
    assert found.tolist() == [True, False]
    assert torch.allclose(centres[0], torch.tensor([20.0, 34.0]), atol=0.5)
    pred = model.predict_mask(torch.zeros(2, 1, h, w))
    assert pred.shape == (2, h, w) and pred.dtype == torch.uint8
    p = pred[0].numpy().astype(bool)
    assert 2 * (p & big).sum() / (p.sum() + big.sum()) > 0.9
    assert pred[1].sum() == 0  # nothing above the threshold: empty mask
    model.eval()
    logits_out = model(torch.zeros(2, 1, h, w))
    assert torch.equal((logits_out[:, 0] > 0).to(torch.uint8), pred)
    # supplied centres (the paper's protocol) are used as given
    pred2 = model.predict_mask(torch.zeros(2, 1, h, w), centres=torch.tensor([[20.0, 34.0], [20.0, 34.0]]))
    assert pred2[1].sum() > 0


def test_midrange_centre_ignores_a_large_weakly_positive_region():
    # the map is a foreground logit up to an offset: a broad region slightly above 0 must not win
    h, w = 48, 48
    tumour = _disc(h, w, 12.0, 14.0, 5.0)
    maps = np.full((h, w), -3.0, np.float32)
    maps[24:, :] = 0.5  # larger than the tumour, barely positive
    maps[tumour] = 4.0
    maps = torch.from_numpy(maps)[None]
    mid = EDPCNN(_tiny_cfg()).centres_from_maps(maps)[0][0]
    thr = EDPCNN(_tiny_cfg(centre_method="threshold")).centres_from_maps(maps)[0][0]
    assert torch.allclose(mid, torch.tensor([12.0, 14.0]), atol=0.5)
    assert thr[0] > 24  # the threshold rule picks the broad region


def test_shapes_and_config_errors():
    model = build_edpcnn(ModelConfig(encoder="resnet10t", in_channels=2, out_channels=3,
                                     decoder_channels=(16, 16, 8, 8, 8)), n_rays=8, n_points=6, radius_px=6.0)
    assert model.spatial_dims == 2 and EDPCNNConfig.spatial_dims == 2
    assert model(torch.randn(2, 2, 33, 29)).shape == (2, 1, 33, 29)
    with pytest.raises(ValueError, match="unknown settings"):
        build_edpcnn(ModelConfig(encoder="resnet10t"), rays=3)
    with pytest.raises(ValueError, match="delta"):
        _tiny_cfg(delta=-1)
    with pytest.raises(ValueError, match="centre_method"):
        _tiny_cfg(centre_method="oracle")
    with pytest.raises(ValueError, match="out_channels"):
        EDPCNNConfig(unet=ModelConfig(out_channels=3))
    with pytest.raises(ValueError, match="cost must be"):
        closed_contour_dp(torch.zeros(3, 4), 1)
