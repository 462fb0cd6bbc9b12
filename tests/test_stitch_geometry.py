"""Window positions and blending weights: hand-computed fixtures (medseg.stitch.geometry / weights)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.stitch.geometry import (compute_steps, compute_windows, padded_size, window_slices,
                                    windows_touching)
from medseg.stitch.weights import WEIGHT_MODES, compute_weights, separable_profiles, trimmed_weights


@pytest.mark.parametrize(("size", "patch", "overlap", "expected"), [
    (10, 4, 0.5, (0, 2, 4, 6)),
    (8, 4, 0.5, (0, 2, 4)),
    (11, 4, 0.5, (0, 2, 4, 5, 7)),  # even spread of 7 over 4 steps: 0, 1.75, 3.5, 5.25, 7 rounded
    (12, 4, 0.0, (0, 4, 8)),
    (13, 4, 0.0, (0, 3, 6, 9)),  # last window flush with the border
    (4, 4, 0.5, (0,)),
    (100, 64, 0.25, (0, 36)),
    (5, 1, 0.5, (0, 1, 2, 3, 4)),  # size-1 patch axis steps by one
])
def test_compute_steps_fixtures(size, patch, overlap, expected):
    assert compute_steps(size, patch, overlap) == expected


def test_steps_cover_and_respect_overlap():
    for size in range(8, 60):
        for patch in (4, 7, 8):
            steps = compute_steps(size, patch, 0.5)
            assert steps[0] == 0 and steps[-1] + patch == size
            assert all(0 < b - a <= math.ceil(patch * 0.5) for a, b in zip(steps, steps[1:]))


def test_compute_windows_order_and_count():
    windows = compute_windows((6, 10), (4, 4), 0.5)
    assert windows[:4] == ((0, 0), (0, 2), (0, 4), (0, 6))
    assert len(windows) == 2 * 4 and windows[-1] == (2, 6)
    assert len(compute_windows((5, 8, 8), (1, 8, 8), 0.5)) == 5


def test_padded_size_and_slices():
    assert padded_size((3, 10), (4, 4)) == (4, 10)
    assert window_slices((1, 2), (3, 4)) == (slice(1, 4), slice(2, 6))


def test_geometry_bad_args():
    with pytest.raises(ValueError, match="overlap"):
        compute_steps(10, 4, 1.0)
    with pytest.raises(ValueError, match="overlap"):
        compute_windows((10,), (4,), -0.1)
    with pytest.raises(ValueError, match="image_size"):
        compute_steps(3, 4, 0.5)
    with pytest.raises(ValueError, match="patch_size"):
        compute_windows((10, 10), (4,), 0.5)
    with pytest.raises(ValueError, match="patch_size"):
        compute_windows((10, 10), (4, 0), 0.5)


E4 = math.exp(-4.0)  # gaussian, p=4, sigma=0.5: exp(-1.5^2/0.5) / exp(-0.5^2/0.5)
COS = 3 - 2 * math.sqrt(2)  # sin^2(pi/8) / sin^2(3 pi/8)
WEIGHTS_1D = {
    "gaussian": [E4, 1, 1, E4],
    "constant": [1, 1, 1, 1],
    "pyramid": [0.5, 1, 1, 0.5],
    "cosine": [COS, 1, 1, COS],
}
WEIGHTS_2D = {
    "gaussian": np.outer(WEIGHTS_1D["gaussian"], WEIGHTS_1D["gaussian"]),
    "constant": np.ones((4, 4)),
    "pyramid": np.array([[0.5, 0.5, 0.5, 0.5],
                         [0.5, 1.0, 1.0, 0.5],
                         [0.5, 1.0, 1.0, 0.5],
                         [0.5, 0.5, 0.5, 0.5]]),
    "cosine": np.outer(WEIGHTS_1D["cosine"], WEIGHTS_1D["cosine"]),
}


@pytest.mark.parametrize("mode", sorted(WEIGHT_MODES))
def test_weight_fixtures(mode):
    np.testing.assert_allclose(compute_weights((4,), mode, 0.125), WEIGHTS_1D[mode], rtol=1e-6)
    np.testing.assert_allclose(compute_weights((4, 4), mode, 0.125), WEIGHTS_2D[mode], rtol=1e-6)


def test_pyramid_odd_fixture():
    np.testing.assert_allclose(compute_weights((5,), "pyramid"), np.array([1, 2, 3, 2, 1]) / 3, rtol=1e-6)


@pytest.mark.parametrize("mode", sorted(WEIGHT_MODES))
def test_weights_properties(mode):
    for shape in [(1,), (3,), (7, 5), (1, 6, 6), (4, 1, 3)]:
        w = compute_weights(shape, mode)
        assert w.shape == shape and w.dtype == np.float32
        assert w.max() == pytest.approx(1.0) and (w > 0).all()
        assert not w.flags.writeable
    # a size-1 axis is constant 1: the (1, h, w) map equals the (h, w) one
    np.testing.assert_array_equal(compute_weights((1, 4, 6), mode)[0], compute_weights((4, 6), mode))
    np.testing.assert_array_equal(compute_weights((1,), mode), [1.0])


def test_gaussian_sigma_and_zero_replacement():
    w = compute_weights((9,), "gaussian", 0.25)  # sigma = 2.25
    np.testing.assert_allclose(w, np.exp(-0.5 * ((np.arange(9) - 4) / 2.25) ** 2), rtol=1e-6)
    tiny = compute_weights((64, 64), "gaussian", 0.005)  # underflows to 0 in float32 far from the centre
    assert (tiny > 0).all() and tiny[0, 0] == tiny.min() and (tiny == tiny.min()).sum() > 4
    assert separable_profiles((64, 64), "gaussian", 0.005) is None
    assert separable_profiles((4, 4), "pyramid", 0.125) is None
    np.testing.assert_allclose(np.multiply.outer(*separable_profiles((4, 6), "cosine", 0.125)),
                               compute_weights((4, 6), "cosine"), rtol=1e-6)


def test_trimmed_weights():
    w = trimmed_weights((6,), "constant", 0.125, ((2, 1),))
    np.testing.assert_array_equal(w, [0, 0, 1, 1, 1, 0])
    assert trimmed_weights((6,), "constant", 0.125, ((0, 0),)) is compute_weights((6,), "constant", 0.125)


def test_weights_bad_args():
    with pytest.raises(ValueError, match=r"mode must be one of \['constant', 'cosine', 'gaussian', 'pyramid'\]"):
        compute_weights((4,), "hann")
    with pytest.raises(ValueError, match="sigma_scale"):
        compute_weights((4,), "gaussian", 0.0)
    with pytest.raises(ValueError, match="patch_size"):
        compute_weights((4, 0), "gaussian")


def test_windows_touching_mask():
    mask = np.zeros((4, 4), dtype=bool)
    mask[3, 3] = True  # mask pixel = 4x4 full-resolution pixels: full-res [12:16, 12:16]
    windows = np.array([[0, 0], [8, 8], [10, 10], [12, 0], [12, 12]])
    np.testing.assert_array_equal(windows_touching(mask, windows, (4, 4), 4.0), [False, False, True, False, True])
    assert not windows_touching(np.zeros((4, 4), bool), windows, (4, 4), 4.0).any()
