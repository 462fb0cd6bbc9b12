"""3-D U-Net with summed multi-scale segmentation maps (Kayalibay, Jensen & van der Smagt 2017,
"CNN-based Segmentation of Medical Imaging Data", seed 004).

Architecture (Sec. 2.1, Fig. 4, Appendix A Fig. 17 and Table 7), levels ``l = 0..L-1`` with
``features[l]`` channels (Table 7: 8, 16, 32, 64):

- contracting stage: level 0 is one 3x3x3 convolution; every deeper level starts with a
  stride-2 3x3x3 convolution ("Conv/2", strided convolution in place of max-pooling) followed by
  one 3x3x3 convolution;
- expanding stage, per level from the bottom up: a 1x1x1 convolution halving the channels, a
  "deconvolution" that is nearest-neighbour upsampling followed by a 3x3x3 convolution
  (Appendix A, Fig. 16) to ``features[l]`` channels, merging with the contracting stage's
  feature maps of the same size (concatenation, the network used for BRATS in Sec. 4.2, or
  element-wise summation, ``merge: sum``), then one 3x3x3 convolution to ``2 * features[l]``;
- every convolution but the 1x1x1 ones is followed by batch normalisation and PReLU (Sec. 2.1);
  running averages with alpha = 0.5 (Appendix A, eq. 6; PyTorch ``momentum = 1 - alpha``);
  weights drawn from N(0, 0.01) (Sec. 3.2.1);
- **segmentation maps** from ``seg_levels`` decoder levels (3: full, 1/2 and 1/4 size; Sec. 2.1)
  by 1x1x1 convolutions; the coarsest is upsampled (linear interpolation; "bilinear" in the
  paper, trilinear in 3-D) to the next finer one and **added**, and the sum is upsampled and
  added to the next, down to full size. One output, no auxiliary losses: the summation only
  speeds up convergence (Sec. 4.1, Fig. 10).

Training in the paper: Jaccard distance summed over classes (Sec. 2.2, eq. 3; ``jaccard`` in
``medseg.training.losses``, the default here), Adam with learning rate 5e-5, flips and random rotations.

Deviations, and why:

- the first stride-2 convolution outputs ``features[1]`` (16) channels, where Table 7 keeps 8
  and doubles in the next convolution; deeper levels match Table 7 exactly (one rule for all);
- padding: inputs whose size is not a multiple of ``2 ** (L - 1)`` are padded (reflect) and the
  logits cropped back; the paper used sizes that fit;
- the paper trained on whole (or downsampled) images, e.g. 160x144x128 for BRATS; here the
  default is a 128^3 patch stitched by medseg's sliding-window inference (gaussian blending);
- ``norm: instance`` and other activations are offered as options; the defaults are the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from medseg.models.blocks import ConvNormAct, SegmentationNet, Up, check_common, conv_op, make_act, make_norm


@dataclass(frozen=True)
class UNet3DConfig:
    """Config key ``models.<key>`` with ``arch: unet3d``.

    Attributes:
        arch: registry key.
        in_channels: input channels (modalities); set by the trainer from the task.
        out_channels: K logits (regions or labels + background); set by the trainer.
        spatial_dims: 3 (the paper) or 2.
        features: channels per level, finest first (Table 7: 8, 16, 32, 64).
        merge: long skip connections by ``concat`` (Sec. 4.2, BRATS) or ``sum`` (Sec. 2.1 option).
        seg_levels: decoder levels whose segmentation maps are summed (3 in the paper; 1 = off).
        norm: ``batch`` (paper), ``instance`` or ``none``.
        norm_momentum: batch-norm running-average momentum (1 - alpha; alpha = 0.5 in Appendix A).
        act: ``prelu`` (paper), ``leakyrelu`` or ``relu``.
        init_std: std of the Gaussian weight initialisation (0.01, Sec. 3.2.1); 0 keeps PyTorch's.
        channels_last: run in ``channels_last_3d`` memory format (may speed up GPU convolutions).
    """

    arch: str = "unet3d"
    in_channels: int = 4
    out_channels: int = 3
    spatial_dims: int = 3
    features: tuple[int, ...] = (8, 16, 32, 64)
    merge: str = "concat"
    seg_levels: int = 3
    norm: str = "batch"
    norm_momentum: float = 0.5
    act: str = "prelu"
    init_std: float = 0.01
    channels_last: bool = False

    def __post_init__(self) -> None:
        if len(self.features) < 2 or min(self.features) < 1:
            raise ValueError(f"models.features must be >= 2 positive channel counts, got {self.features}")
        check_common(self)
        if self.merge not in ("concat", "sum"):
            raise ValueError(f"models.merge must be 'concat' or 'sum', got {self.merge!r}")
        if not 1 <= self.seg_levels <= len(self.features) - 1:
            raise ValueError(f"models.seg_levels must be in [1, {len(self.features) - 1}], got {self.seg_levels}")

    @property
    def divisor(self) -> int:
        """Total stride: windows and patches are multiples of it (inputs are padded up to one)."""
        return 2 ** (len(self.features) - 1)


class UNet3D(SegmentationNet):
    """Kayalibay et al.'s U-Net: ``(B, C, D, H, W)`` -> logits ``(B, K, D, H, W)`` (or 2-D)."""

    def __init__(self, cfg: UNet3DConfig) -> None:
        super().__init__()
        self.cfg = cfg
        nd = self.spatial_dims = cfg.spatial_dims
        self.channels_last = cfg.channels_last
        f = cfg.features
        self.divisor = cfg.divisor
        kw = {"norm": cfg.norm, "act": cfg.act, "norm_momentum": cfg.norm_momentum}
        self.enc = nn.ModuleList([ConvNormAct(nd, cfg.in_channels, f[0], **kw)])
        for lvl in range(1, len(f)):
            self.enc.append(nn.Sequential(ConvNormAct(nd, f[lvl - 1], f[lvl], 3, 2, **kw),
                                          ConvNormAct(nd, f[lvl], f[lvl], **kw)))
        self.reduce = nn.ModuleList()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        cin = f[-1]
        for lvl in range(len(f) - 2, -1, -1):  # decoder, coarsest first
            self.reduce.append(conv_op(nd)(cin, cin // 2 or 1, 1))
            self.up.append(nn.Sequential(Up(nd, cin // 2 or 1, f[lvl], "nearest_conv", 3, bias=cfg.norm == "none"),
                                         make_norm(cfg.norm, nd, f[lvl], cfg.norm_momentum), make_act(cfg.act, f[lvl])))
            merged = 2 * f[lvl] if cfg.merge == "concat" else f[lvl]
            self.dec.append(ConvNormAct(nd, merged, 2 * f[lvl], **kw))
            cin = 2 * f[lvl]
        n_dec = len(f) - 1
        # 1x1x1 heads on the last `seg_levels` decoder outputs (coarsest first)
        self.heads = nn.ModuleList(conv_op(nd)(2 * f[lvl], cfg.out_channels, 1)
                                   for lvl in range(cfg.seg_levels - 1, -1, -1))
        self._head_from = n_dec - cfg.seg_levels
        if cfg.init_std > 0:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                    nn.init.normal_(m.weight, 0.0, cfg.init_std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        seg = None
        for i, (red, up, dec) in enumerate(zip(self.reduce, self.up, self.dec)):
            skip = skips.pop()
            x = up(red(x))
            x = torch.cat([x, skip], 1) if self.cfg.merge == "concat" else x + skip
            x = dec(x)
            if i >= self._head_from:
                s = self.heads[i - self._head_from](x)
                if seg is not None:
                    s = s + F.interpolate(seg, size=s.shape[2:], mode=mode, align_corners=False)
                seg = s
        return seg
