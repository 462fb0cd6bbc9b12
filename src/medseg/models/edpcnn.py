"""EDPCNN: a U-Net and star-pattern dynamic programming trained end to end with synthetic gradients.

Nguyen & Ray, "End-to-end learning of convolutional neural net and dynamic programming for left
ventricle segmentation" (MIDL 2020; arXiv 1812.00328), Fig. 1, Sec. 2.2, Algorithm 2, Sec. 3.3-3.4;
authors' code github.com/minhnhat93/EDPCNN (``train_edpcnn.py``, ``run_edpcnn.py``).

Pipeline (Fig. 1): image ``(B, C, H, W)`` -> U-Net -> output map ``(B, H, W)`` -> Interp on a star
pattern around a centre -> warped map -> radial cost ``(B, N, M)`` (Eq. 2) -> DP (Algorithm 1,
:mod:`medseg.models.star_dp`) -> indices -> circular moving average (Sec. 3.4) -> polygon -> mask.

In the workflow: model key ``edpcnn`` (:class:`EDPCNNModelConfig` in :data:`medseg.models.REGISTRY`),
trained on one object of the task (``models.<key>.object``: a label or region, e.g. ACDC's LV
cavity; default the largest region, BraTS WT, or the union of the labels) by
:mod:`medseg.training.edpcnn`, predicted slice by slice by :mod:`medseg.inference.edpcnn`.

Training (Algorithm 2): the DP is not differentiable, so an approximating network ``F``
(:class:`SGNet`, "Approx. Neural Network") maps the cost to ``N`` softmax vectors of size ``M``
mimicking the DP's (post-processed) indices. Per batch: (inner) ``F`` is fitted for ``sg_steps``
steps to ``DP(g + sigma eps_s)`` on ``S`` noisy copies of the cost (exploration); (outer) the
U-Net is trained through ``F`` by minimising ``CE(F(g), p_gt)``, ``p_gt`` the ground-truth
indices where the rays cross the mask. ``F``'s gradient is the synthetic gradient of the DP.
Two Adam optimisers (``beta = (0.9, 0.999)``), one per network.

Centre of the star pattern:

* training: a random pixel of the ground-truth mask plus a random rotation of the pattern
  (Sec. 3.3; the authors' code draws the centre uniformly inside the mask, rotation in
  ``[-pi, pi]``).
* inference: **the paper uses the ground-truth centre** (Sec. 3.2: "the ground truth left
  ventricle center for an image serves as the center of the star pattern"; automatic placement
  is named future work in Sec. 4). :meth:`EDPCNN.predict_mask` accepts such centres; without
  them (the default here, and the only option in a workflow) the centre is taken from the
  U-Net's own output: the centre of mass of the largest connected component of the map above
  a level (:func:`medseg.models.star_dp.largest_component_centre`), the level being
  ``(max + median) / 2`` of the map (``centre_method="midrange"``, default) or
  ``centre_threshold`` (``"threshold"``); a map whose maximum is not above ``centre_threshold``
  gives an empty mask. This is a deviation needed to run without a human in the loop.
  Measured on the demo cohort (``benchmarks/bench_edpcnn.py``, all training slices): Dice 0.599
  with ``"threshold"`` (the map is > 0 on 5 % of the background, so the largest component is often
  a false one), 0.882 with ``"midrange"`` (centre inside the tumour on 100 % of held-out slices),
  0.887 with ground-truth centres.

Deviations from the paper (besides those listed in :mod:`medseg.models.star_dp`):

* ``centre_loss_weight`` (default 0.1) adds a pixel-wise BCE on the U-Net map, so that the map
  is a foreground logit from which the inference centre can be read. The paper trains the
  U-Net through ``F`` only (set the weight to 0 for that; the map is then defined only up to
  an offset, so keep ``centre_method="midrange"`` and set ``centre_threshold=-inf``, or supply
  centres).
* ``F`` sees the radial cost ``g(n, i) - g(n, i-1)`` (as in the authors' code) rather than the
  warped map itself, and noise is added to that cost (as in the authors' code).
* ``F`` is a 3-level U-Net with ``base_channels = 8`` as in Sec. 3.3, with batch norm; padding is
  zero padding in both axes (rays are circular, this is ignored as in the paper).
* the U-Net is medseg's :class:`~medseg.models.unet.TimmUNet` (any timm encoder, padded
  convolutions) instead of the original unpadded U-Net with 64 base channels.
* the paper's ``M = R = 65`` px on 212 x 212 images at ACDC resolution; ``n_points`` and
  ``radius_px`` must be chosen so that ``R`` covers the objects at the data's pixel size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from medseg.models.star_dp import (
    closed_contour_dp,
    largest_component_centre,
    radial_cost,
    render_contour,
    sample_star,
    smooth_indices,
)
from medseg.models.unet import ModelConfig, TimmUNet


def _default_unet() -> ModelConfig:
    return ModelConfig(arch="timm_unet", encoder="resnet10t", in_channels=1, out_channels=1,
                       decoder_channels=(128, 64, 48, 32, 16))


@dataclass(frozen=True)
class StarDPSettings:
    """The star-pattern DP and training settings EDPCNN adds to its U-Net (see :class:`EDPCNNConfig`)."""

    n_rays: int = 50
    n_points: int = 65
    radius_px: float = 65.0
    delta: int = 2
    smoothing_window: int = 5
    interp: str = "bilinear"
    sg_base_channels: int = 8
    sg_depth: int = 3
    sg_steps: int = 10
    noise_samples: int = 10
    noise_sigma: float = 1.0
    lr: float = 1e-4
    sg_lr: float = 1e-4
    centre_jitter: bool = True
    angle_jitter: float = math.pi
    centre_loss_weight: float = 0.1
    centre_method: str = "midrange"
    centre_threshold: float = 0.0
    eval_output: str = "mask_logits"
    spatial_dims: ClassVar[int] = 2


@dataclass(frozen=True)
class EDPCNNConfig(StarDPSettings):
    """Config of model key ``edpcnn``; defaults are the paper's settings (Sec. 3.3-3.4).

    Attributes:
        unet: the map-producing U-Net (``out_channels`` must be 1).
        n_rays: ``N`` radial lines (paper: 50, grid-searched over 12, 25, 50, 100).
        n_points: ``M`` points per ray (paper: 65 = the radius in pixels).
        radius_px: star radius ``R`` in pixels (paper: 65 on 212 x 212 images).
        delta: smoothness bound ``|v_n - v_{n+1}| <= delta`` (paper: 2).
        smoothing_window: circular moving average of the DP indices (paper: 5; 1 disables).
        interp: ``"bilinear"`` or ``"nearest"`` (paper: nearest).
        sg_base_channels: channels of ``F``'s first convolution (paper: 8).
        sg_depth: encoder/decoder blocks of ``F`` (paper: 3).
        sg_steps: inner minimisation steps of ``F`` per batch (paper: 10).
        noise_samples: ``S`` noisy copies per image for exploration (paper: 10).
        noise_sigma: ``sigma`` of the exploration noise (paper: 1).
        lr: Adam learning rate of the U-Net (paper: 1e-4).
        sg_lr: Adam learning rate of ``F`` (paper: 1e-4).
        centre_jitter: draw the training centre uniformly inside the mask (paper: yes), else
            its centre of mass.
        angle_jitter: random rotation of the star pattern in ``[-a, a]`` radians while training
            (authors' code: pi).
        centre_loss_weight: weight of the pixel BCE on the map (deviation, see module doc).
        centre_method: ``"midrange"`` (map above ``(max + median) / 2``) or ``"threshold"`` (map
            above ``centre_threshold``): the region whose largest component gives the inference centre.
        centre_threshold: logit level of the map: no pixel above it -> empty mask (and the region
            of ``centre_method="threshold"``).
        eval_output: what ``forward`` returns in eval mode: ``"mask_logits"`` (the EDPCNN mask
            as +-10 logits, so sigmoid > 0.5 reproduces :meth:`EDPCNN.predict_mask`) or ``"map"``.
    """

    unet: ModelConfig = field(default_factory=_default_unet)

    def __post_init__(self) -> None:
        if self.unet.out_channels != 1:
            raise ValueError(f"models.edpcnn.unet.out_channels must be 1 (one map), got {self.unet.out_channels}")
        if self.n_rays < 3 or self.n_points < 2:
            raise ValueError(f"models.edpcnn n_rays must be >= 3 and n_points >= 2, got {self.n_rays}, {self.n_points}")
        if not self.radius_px > 0:
            raise ValueError(f"models.edpcnn.radius_px must be > 0, got {self.radius_px}")
        if self.delta < 0:
            raise ValueError(f"models.edpcnn.delta must be >= 0, got {self.delta}")
        if self.interp not in ("bilinear", "nearest"):
            raise ValueError(f"models.edpcnn.interp must be 'bilinear' or 'nearest', got {self.interp!r}")
        if self.centre_method not in ("midrange", "threshold"):
            raise ValueError(f"models.edpcnn.centre_method must be 'midrange' or 'threshold', got {self.centre_method!r}")
        if self.eval_output not in ("mask_logits", "map"):
            raise ValueError(f"models.edpcnn.eval_output must be 'mask_logits' or 'map', got {self.eval_output!r}")
        if self.sg_steps < 1 or self.noise_samples < 1 or self.sg_depth < 1 or self.sg_base_channels < 1:
            raise ValueError("models.edpcnn sg_steps, noise_samples, sg_depth and sg_base_channels must be >= 1")
        if self.noise_sigma < 0 or self.centre_loss_weight < 0:
            raise ValueError(f"models.edpcnn noise_sigma and centre_loss_weight must be >= 0, "
                             f"got {self.noise_sigma}, {self.centre_loss_weight}")


@dataclass(frozen=True)
class EDPCNNModelConfig(StarDPSettings):
    """Config of the registry key ``edpcnn`` (``models.<key>`` with ``arch: edpcnn``): flat.

    The U-Net encoder settings of :class:`~medseg.models.unet.ModelConfig` (``encoder``,
    ``decoder_channels``, ``pretrained``, ``weights``) plus every EDPCNN setting of
    :class:`EDPCNNConfig` (same names, same meaning, same paper defaults; see there), and ``object``:
    the label or region of the task it segments (the paper: the LV cavity, ``LV`` of ACDC; ``None``:
    the largest region, or the union of the labels), resolved against the task by
    :func:`medseg.inference.edpcnn.resolve_object`.
    ``in_channels``, ``out_channels`` and ``object_channel`` are set by the trainer from the task:
    the U-Net takes ``in_channels`` (modalities x context slices) and always produces ONE map;
    ``out_channels`` is the task's output count ``K``, the channels :mod:`medseg.inference.edpcnn`
    fills at inference: the segmented object in channel ``object_channel`` (its region's or label's
    channel; the union of the labels: the first label's), the other channels empty. 2-D: whole
    slices, ``patch_size`` None.
    """

    arch: str = "edpcnn"
    encoder: str = "resnet18"
    in_channels: int = 12
    out_channels: int = 3
    object_channel: int = 0
    object: str | None = None
    decoder_channels: tuple[int, ...] = (128, 64, 48, 32, 16)
    pretrained: bool = False
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.arch != "edpcnn":
            raise ValueError(f"models.arch of an EDPCNNModelConfig must be 'edpcnn', got {self.arch!r}")
        if self.out_channels < 1 or not 0 <= self.object_channel < self.out_channels:
            raise ValueError(f"models.edpcnn.out_channels must be >= 1 and object_channel in [0, out_channels), "
                             f"got {self.out_channels}, {self.object_channel}")
        self.edpcnn_config()  # validates the EDPCNN settings

    def edpcnn_config(self) -> EDPCNNConfig:
        """The :class:`EDPCNNConfig` (U-Net with one output map) these settings describe."""
        unet = ModelConfig(arch="timm_unet", encoder=self.encoder, in_channels=self.in_channels, out_channels=1,
                           decoder_channels=tuple(self.decoder_channels), pretrained=self.pretrained,
                           weights=self.weights)
        names = [f.name for f in fields(StarDPSettings)]
        return EDPCNNConfig(unet=unet, **{n: getattr(self, n) for n in names})


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class SGNet(nn.Module):
    """``F``, the approximating network (Sec. 2.2, 3.3): a small padded U-Net on the warped domain.

    Input ``(B, N, M)`` cost; output ``(B, N, M)`` logits, a softmax over ``M`` per ray that
    mimics the DP's chosen index. ``depth`` encoder and decoder blocks, ``base`` channels first,
    doubling per level; odd sizes are handled by resizing to the skip's size.
    """

    def __init__(self, base: int = 8, depth: int = 3) -> None:
        super().__init__()
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(1, chans[0])] + [_block(chans[i], chans[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList(_block(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], 1, 1)

    def forward(self, cost: torch.Tensor) -> torch.Tensor:
        y = cost[:, None]
        skips = []
        for i, blk in enumerate(self.down):
            if i:
                y = F.max_pool2d(y, 2, ceil_mode=True)
            y = blk(y)
            skips.append(y)
        for blk, skip in zip(self.up, reversed(skips[:-1])):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = blk(torch.cat([y, skip], 1))
        return self.head(y)[:, 0]


class EDPCNN(nn.Module):
    """U-Net + star DP (model key ``edpcnn``), ``(B, C, H, W)`` -> map ``(B, 1, H, W)``.

    ``forward`` returns the U-Net's map while training; in eval mode (``eval_output="mask_logits"``)
    it returns the EDPCNN segmentation as logits ``(B, 1, H, W)`` (+10 inside, -10 outside).
    :meth:`predict_mask` gives the mask ``(B, H, W)`` uint8. Trained by :func:`medseg.training.edpcnn_step.train_step`.
    Built from an :class:`EDPCNNConfig` or from the registry's :class:`EDPCNNModelConfig`
    (then ``arch_cfg`` keeps it, ``n_outputs`` is the task's channel count ``K`` and
    ``object_channel`` the channel of the mask; 1 and 0 otherwise).
    """

    spatial_dims: ClassVar[int] = 2

    def __init__(self, cfg: EDPCNNConfig | EDPCNNModelConfig) -> None:
        super().__init__()
        self.arch_cfg = cfg if isinstance(cfg, EDPCNNModelConfig) else None
        self.n_outputs = cfg.out_channels if isinstance(cfg, EDPCNNModelConfig) else 1
        self.object_channel = cfg.object_channel if isinstance(cfg, EDPCNNModelConfig) else 0
        cfg = cfg.edpcnn_config() if isinstance(cfg, EDPCNNModelConfig) else cfg
        self.cfg = cfg
        self.unet = TimmUNet(cfg.unet)
        self.sg = SGNet(cfg.sg_base_channels, cfg.sg_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.unet(x)
        if self.training or self.cfg.eval_output == "map":
            return maps
        mask = self.segment(maps[:, 0])
        return (mask.float() * 20 - 10)[:, None]

    def cost(self, maps: torch.Tensor, centres: torch.Tensor, angles: torch.Tensor | None = None) -> torch.Tensor:
        """Radial cost ``(B, N, M)`` of maps ``(B, H, W)`` on star patterns at ``centres`` ``(B, 2)``."""
        c = self.cfg
        return radial_cost(sample_star(maps, centres, c.n_rays, c.n_points, c.radius_px, angles, c.interp))

    def dp_indices(self, cost: torch.Tensor) -> torch.Tensor:
        """DP then Sec. 3.4 smoothing: ``(B, N, M)`` -> float indices ``(B, N)``."""
        return smooth_indices(closed_contour_dp(cost, self.cfg.delta), self.cfg.smoothing_window)

    def centres_from_maps(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference centres from the U-Net's own output (deviation: the paper supplies them).

        Returns:
            centres ``(B, 2)`` ``(y, x)`` pixels and ``found`` ``(B,)`` bool (False: no pixel of
            the map above ``centre_threshold``; the centre is then the image centre).
        """
        mp = maps.detach().float().cpu().numpy()
        h, w = maps.shape[-2:]
        out, found = [], []
        for m in mp:
            c = None
            if m.max() > self.cfg.centre_threshold:
                level = (m.max() + np.median(m)) / 2 if self.cfg.centre_method == "midrange" else self.cfg.centre_threshold
                c = largest_component_centre(m > level)
            found.append(c is not None)
            out.append(c if c is not None else ((h - 1) / 2, (w - 1) / 2))
        return torch.tensor(out, dtype=torch.float32, device=maps.device), torch.tensor(found, device=maps.device)

    @torch.no_grad()
    def segment(self, maps: torch.Tensor, centres: torch.Tensor | None = None) -> torch.Tensor:
        """Masks ``(B, H, W)`` bool from maps ``(B, H, W)``; centres ``(B, 2)`` or from the maps."""
        c = self.cfg
        found = torch.ones(len(maps), dtype=torch.bool, device=maps.device)
        if centres is None:
            centres, found = self.centres_from_maps(maps)
        centres = centres.to(maps.device).float()
        idx = self.dp_indices(self.cost(maps, centres))
        masks = render_contour(centres, idx, c.n_points, c.radius_px, *maps.shape[-2:])
        return masks & found[:, None, None]

    @torch.no_grad()
    def predict_mask(self, x: torch.Tensor, centres: torch.Tensor | None = None) -> torch.Tensor:
        """Segment images ``(B, C, H, W)`` -> ``(B, H, W)`` uint8 (1 = object).

        Args:
            x: input images.
            centres: optional ``(B, 2)`` ``(y, x)`` pixel centres (the paper's protocol: ground
                truth); default: from the U-Net's output (:meth:`centres_from_maps`).
        """
        was = self.training
        self.eval()
        try:
            maps = self.unet(x)[:, 0]
            return self.segment(maps, centres).to(torch.uint8)
        finally:
            self.train(was)


def build_edpcnn(unet: ModelConfig, **settings) -> EDPCNN:
    """Builder for a registry entry ``edpcnn``: the U-Net from a :class:`ModelConfig` (forced to one
    output channel), the EDPCNN settings (fields of :class:`EDPCNNConfig`) as keywords."""
    from dataclasses import fields, replace

    valid = {f.name for f in fields(EDPCNNConfig)} - {"unet"}
    bad = set(settings) - valid
    if bad:
        raise ValueError(f"models.edpcnn: unknown settings {sorted(bad)}; valid: {sorted(valid)}")
    return EDPCNN(EDPCNNConfig(unet=replace(unet, out_channels=1), **settings))
