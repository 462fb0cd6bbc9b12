"""Star-pattern sampling, closed-contour dynamic programming and polygon rendering (EDPCNN).

Nguyen & Ray, "End-to-end learning of convolutional neural net and dynamic programming for
left ventricle segmentation" (MIDL 2020; arXiv 1812.00328), Sec. 2.1, Fig. 1-2, Algorithm 1.

Geometry (all in pixels, ``(y, x)`` = (row, column) order, pixel ``(i, j)``'s centre at ``(i, j)``):

* a *star pattern* is ``N`` rays (radial lines) at angles ``theta_n = 2 pi n / N + offset``
  around a centre; each ray is sampled at ``M + 1`` radii ``r_j = j R / M`` (``j = 0..M``, the
  first sample is the centre itself). The paper takes ``M = R`` (one sample per pixel,
  Sec. 3.3: ``R = M = 65``, ``N = 50``, ``delta = 2``).
* the *warped map* ``g`` is the map sampled on the pattern, ``(B, N, M + 1)``; the DP's cost for
  choosing point ``i`` on ray ``n`` is the radial difference ``g(n, i) - g(n, i - 1)`` of Eq. (2),
  so index ``v in 0..M-1`` means "the boundary lies between samples ``v`` and ``v + 1``", at
  radius ``(v + 1/2) R / M``.
* the DP (Eq. 1-2, Algorithm 1) picks one index per ray minimising the closed sum of
  ``E(n, v_n, v_{n+1})`` with ``|v_n - v_{n+1}| <= delta`` for every neighbouring pair *including*
  the closing pair ``(v_N, v_1)``; it is exact: the first ray's index is kept as a state
  (Algorithm 1's ``U(n, i, k)``: ``i`` = first index, ``k`` = current index), which is the
  paper's way of closing the contour.

Deviations from the paper / the authors' code (github.com/minhnhat93/EDPCNN), all deliberate:

* sampling is bilinear (``grid_sample``), the paper uses nearest neighbour (Sec. 3.3); nearest is
  available with ``mode="nearest"``.
* the contour point of index ``v`` sits at radius ``(v + 1/2) R / M`` (midpoint of the edge the
  cost measures); the authors' code places it at ``1 + v (R - 1) / M``.
* the DP's inner minimum runs only over the ``2 delta + 1`` admissible predecessors
  (``O(N M^2 delta)`` instead of Algorithm 1's ``O(N M^3)``); the result is the same minimum.
* the ground-truth index on a ray is the *first exit* of the mask from the centre (the
  authors intersect the ray with the mask's outer contour with shapely); both agree for masks
  that are star-convex around the centre.
* the polygon is rendered by an exact point-in-polygon test at pixel centres (the authors use
  ``cv2.fillPoly`` on rounded vertices).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _check_star(n_rays: int, n_points: int, radius: float) -> None:
    if n_rays < 3:
        raise ValueError(f"n_rays must be >= 3, got {n_rays}")
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0 pixels, got {radius}")


def ray_angles(n_rays: int, angle_offset: torch.Tensor | None = None, batch: int = 1) -> torch.Tensor:
    """Angles of the rays, ``(B, N)`` radians: ``2 pi n / N`` plus a per-sample offset ``(B,)``."""
    base = torch.arange(n_rays, dtype=torch.float32) * (2 * math.pi / n_rays)
    if angle_offset is None:
        return base.expand(batch, n_rays)
    return base[None].to(angle_offset.device) + angle_offset.float()[:, None]


def star_coordinates(centres: torch.Tensor, n_rays: int, n_points: int, radius: float,
                     angle_offset: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel coordinates of a star pattern.

    Args:
        centres: ``(B, 2)`` float, ``(y, x)`` in pixels.
        n_rays: ``N`` radial lines.
        n_points: ``M``; each ray gets ``M + 1`` samples at radii ``j R / M``, ``j = 0..M``.
        radius: ``R`` in pixels.
        angle_offset: optional ``(B,)`` rotation of the pattern in radians (training exploration,
            Sec. 3.3 "we also randomly rotate the star pattern").

    Returns:
        ``(B, N, M + 1, 2)`` float ``(y, x)`` pixel coordinates.
    """
    _check_star(n_rays, n_points, radius)
    centres = centres.float()
    theta = ray_angles(n_rays, angle_offset, len(centres)).to(centres.device)  # (B, N)
    r = torch.arange(n_points + 1, dtype=torch.float32, device=centres.device) * (radius / n_points)
    dy = torch.sin(theta)[..., None] * r  # (B, N, M+1)
    dx = torch.cos(theta)[..., None] * r
    return torch.stack([centres[:, None, None, 0] + dy, centres[:, None, None, 1] + dx], -1)


def sample_star(maps: torch.Tensor, centres: torch.Tensor, n_rays: int, n_points: int, radius: float,
                angle_offset: torch.Tensor | None = None, mode: str = "bilinear") -> torch.Tensor:
    """The warped map ``g``: ``maps`` interpolated on the star pattern ("Interp" in Fig. 1).

    Differentiable with respect to ``maps`` (the U-Net output). Points outside the image take
    the value of the nearest border pixel.

    Args:
        maps: ``(B, H, W)`` or ``(B, 1, H, W)`` float.
        centres, n_rays, n_points, radius, angle_offset: see :func:`star_coordinates`.
        mode: ``"bilinear"`` (default, a deviation) or ``"nearest"`` (the paper's choice).

    Returns:
        ``(B, N, M + 1)`` float.
    """
    if maps.ndim == 3:
        maps = maps[:, None]
    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"maps must be (B, H, W) or (B, 1, H, W), got {tuple(maps.shape)}")
    h, w = maps.shape[-2:]
    pts = star_coordinates(centres.to(maps.device), n_rays, n_points, radius, angle_offset)
    # grid_sample wants (x, y) normalised to [-1, 1] with align_corners=True: -1 -> pixel 0
    gx = pts[..., 1] / max(w - 1, 1) * 2 - 1
    gy = pts[..., 0] / max(h - 1, 1) * 2 - 1
    grid = torch.stack([gx, gy], -1).to(maps.dtype)
    out = F.grid_sample(maps, grid, mode=mode, padding_mode="border", align_corners=True)
    return out[:, 0]


def radial_cost(warped: torch.Tensor) -> torch.Tensor:
    """Eq. (2)'s per-ray term ``g(n, i) - g(n, i - 1)``: ``(B, N, M + 1) -> (B, N, M)``.

    Minimising it puts the contour where the map drops fastest going outwards, i.e. on the
    boundary of a map that is high inside the object and low outside.
    """
    return warped[..., 1:] - warped[..., :-1]


def contour_energy(cost: torch.Tensor, idx: torch.Tensor, delta: int) -> torch.Tensor:
    """Eq. (1): ``sum_n E(n, v_n, v_{n+1 mod N})`` with Eq. (2)'s ``E`` (``inf`` if the smoothness
    constraint ``|v_n - v_{n+1}| <= delta`` fails anywhere, closing pair included).

    Args:
        cost: ``(B, N, M)`` per-ray costs.
        idx: ``(B, N)`` int64 indices in ``0..M-1``.

    Returns:
        ``(B,)`` float64.
    """
    c = cost.double().gather(-1, idx[..., None].long())[..., 0]  # (B, N)
    nxt = torch.roll(idx, -1, dims=-1)
    e = c + torch.roll(c, -1, dims=-1)  # E(n, v_n, v_{n+1}) = cost(n, v_n) + cost(n+1, v_{n+1})
    bad = (idx - nxt).abs() > delta
    e = torch.where(bad, torch.full_like(e, math.inf), e)
    return e.sum(-1)


@torch.no_grad()
def closed_contour_dp(cost: torch.Tensor, delta: int) -> torch.Tensor:
    """Exact minimiser of Eq. (1) over closed contours (Algorithm 1), vectorised over batch.

    ``U[s, k]`` after ray ``n`` is the least cost of a path ``v_1 = s, ..., v_n = k`` (Algorithm 1's
    ``U(n, i, k)``); each step takes the minimum over the ``2 delta + 1`` admissible predecessors and
    keeps the argmin offset; the closing term ``E(N, v_N, v_1)`` and its constraint are added at the
    end, and the contour is traced back from the best ``(s, k)``.

    Args:
        cost: ``(B, N, M)`` float per-ray costs (``g(n, i) - g(n, i - 1)``, :func:`radial_cost`).
        delta: smoothness bound (paper: 2), ``>= 0``.

    Returns:
        ``(B, N)`` int64 indices in ``0..M-1``; ``|v_n - v_{n+1 mod N}| <= delta`` for all ``n``.
    """
    if cost.ndim != 3:
        raise ValueError(f"cost must be (B, N, M), got {tuple(cost.shape)}")
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    b, n_rays, m = cost.shape
    if n_rays < 2:
        raise ValueError(f"cost needs >= 2 rays, got {n_rays}")
    dev = cost.device
    c = cost.double()
    inf = torch.tensor(math.inf, dtype=c.dtype, device=dev)
    width = 2 * delta + 1
    ar = torch.arange(m, device=dev)
    # U after ray 0: 0 where k == s (the first index is the state), inf elsewhere; (B, S=M, K=M)
    u = torch.where(ar[:, None] == ar[None, :], 0.0, inf).expand(b, m, m).contiguous()
    back = torch.empty((b, n_rays - 1, m, m), dtype=torch.int8, device=dev)  # argmin offset in -delta..delta
    for n in range(n_rays - 1):
        # E(n, j, k) = cost(n, j) + cost(n+1, k): minimise U[s, j] + cost(n, j) over |j - k| <= delta
        a = u + c[:, n, None, :]  # (B, S, J)
        a = F.pad(a, (delta, delta), value=math.inf)  # J padded so that window t of k is j = k + t - delta
        win = a.unfold(-1, width, 1)  # (B, S, K, width)
        best, arg = win.min(-1)
        u = best + c[:, n + 1, None, :]
        back[:, n] = (arg - delta).to(torch.int8)
    # closing pair: E(N, v_N, v_1) = cost(N, v_N) + cost(1, v_1), |v_N - v_1| <= delta
    close = u + c[:, -1, None, :] + c[:, 0, :, None]
    close = torch.where((ar[:, None] - ar[None, :]).abs() <= delta, close, inf)
    flat = close.reshape(b, -1).argmin(-1)
    s, k = flat // m, flat % m
    idx = torch.empty((b, n_rays), dtype=torch.int64, device=dev)
    idx[:, 0] = s
    idx[:, -1] = k
    bi = torch.arange(b, device=dev)
    for n in range(n_rays - 2, 0, -1):  # v_{n} = v_{n+1} + offset stored at step n
        idx[:, n] = idx[:, n + 1] + back[bi, n, s, idx[:, n + 1]].long()
    return idx


def smooth_indices(idx: torch.Tensor, window: int) -> torch.Tensor:
    """Sec. 3.4 post-processing: circular moving average of the indices along the rays.

    Args:
        idx: ``(B, N)`` indices.
        window: filter length (paper: 5); ``<= 1`` returns the indices as float.

    Returns:
        ``(B, N)`` float indices.
    """
    x = idx.float()
    if window <= 1:
        return x
    half = window // 2
    padded = torch.cat([x[:, -half:], x, x[:, :half]], -1) if half else x
    kernel = torch.full((1, 1, window), 1.0 / window, device=x.device)
    out = F.conv1d(padded[:, None], kernel)[:, 0]
    if window % 2 == 0:  # even window: keep length N (the trailing sample is dropped)
        out = out[:, : x.shape[1]]
    return out


def indices_to_radii(idx: torch.Tensor, n_points: int, radius: float) -> torch.Tensor:
    """Radius in pixels of contour index ``v`` (float allowed): ``(v + 1/2) R / M``."""
    return (idx.float() + 0.5) * (radius / n_points)


def radii_to_indices(radii: torch.Tensor, n_points: int, radius: float) -> torch.Tensor:
    """Inverse of :func:`indices_to_radii`, rounded and clipped to ``0..M-1``."""
    return torch.round(radii * (n_points / radius) - 0.5).clamp(0, n_points - 1).long()


def contour_points(centres: torch.Tensor, radii: torch.Tensor,
                   angle_offset: torch.Tensor | None = None) -> torch.Tensor:
    """Polygon vertices ``(B, N, 2)`` ``(y, x)`` pixels from per-ray radii ``(B, N)``."""
    theta = ray_angles(radii.shape[1], angle_offset, len(radii)).to(radii.device)
    c = centres.float().to(radii.device)
    return torch.stack([c[:, None, 0] + radii * torch.sin(theta), c[:, None, 1] + radii * torch.cos(theta)], -1)


def render_polygon(vertices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Fill closed polygons: a pixel is inside when its centre is (even-odd crossing rule).

    Args:
        vertices: ``(B, N, 2)`` ``(y, x)`` pixels, in order along the contour.
        height, width: output size.

    Returns:
        ``(B, H, W)`` bool.
    """
    v = vertices.float()
    yy = torch.arange(height, dtype=torch.float32, device=v.device)[:, None, None]
    xx = torch.arange(width, dtype=torch.float32, device=v.device)[None, :, None]
    out = []
    for poly in v:  # one polygon at a time keeps memory at H x W x N
        y0, x0 = poly[:, 0], poly[:, 1]
        y1, x1 = torch.roll(y0, -1), torch.roll(x0, -1)
        crosses = (y0 > yy) != (y1 > yy)  # (H, 1, N): edge spans the pixel row
        dy = torch.where(y1 == y0, torch.ones_like(y1), y1 - y0)
        x_at = x0 + (yy - y0) * (x1 - x0) / dy  # (H, 1, N)
        hit = crosses & (xx < x_at)  # (H, W, N)
        out.append(hit.sum(-1) % 2 == 1)
    return torch.stack(out) if out else torch.zeros((0, height, width), dtype=torch.bool)


def render_contour(centres: torch.Tensor, idx: torch.Tensor, n_points: int, radius: float,
                   height: int, width: int, angle_offset: torch.Tensor | None = None) -> torch.Tensor:
    """Mask ``(B, H, W)`` bool of the contour given by star indices ``idx`` ``(B, N)`` (int or float)."""
    radii = indices_to_radii(idx, n_points, radius)
    return render_polygon(contour_points(centres, radii, angle_offset), height, width)


def mask_to_star_indices(masks: torch.Tensor, centres: torch.Tensor, n_rays: int, n_points: int, radius: float,
                         angle_offset: torch.Tensor | None = None) -> torch.Tensor:
    """Ground-truth indices ``p_gt`` (Sec. 2.2): where each ray first leaves the mask.

    The mask is sampled (nearest) at the ``M + 1`` star samples; the index on a ray is the last
    sample of the run of inside samples that starts at the centre, i.e. the boundary lies between
    samples ``v`` and ``v + 1``. A ray whose centre sample is outside gets 0; a ray that never
    leaves within ``R`` gets ``M - 1``.

    Args:
        masks: ``(B, H, W)`` binary.
        centres, n_rays, n_points, radius, angle_offset: see :func:`star_coordinates`.

    Returns:
        ``(B, N)`` int64 in ``0..M-1``.
    """
    vals = sample_star(masks.float(), centres, n_rays, n_points, radius, angle_offset, mode="nearest")
    inside = vals > 0.5  # (B, N, M+1)
    run = torch.cumprod(inside.long(), -1).sum(-1)  # samples inside before the first exit
    return (run - 1).clamp(0, n_points - 1)


def largest_component_centre(fg: np.ndarray) -> tuple[float, float] | None:
    """Centre of mass ``(y, x)`` of the largest 8-connected component of a 2-D boolean array,
    moved to the nearest pixel of that component if it falls outside it; ``None`` if empty."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(fg, structure=np.ones((3, 3), bool))
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    comp = lab == (int(np.argmax(sizes)) + 1)
    cy, cx = ndi.center_of_mass(comp)
    iy, ix = int(round(cy)), int(round(cx))
    if not comp[iy, ix]:
        pts = np.argwhere(comp)
        iy, ix = pts[np.argmin((pts[:, 0] - cy) ** 2 + (pts[:, 1] - cx) ** 2)]
        return float(iy), float(ix)
    return float(cy), float(cx)
