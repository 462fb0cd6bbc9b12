"""U-Net whose 3-D convolutions are factorised into 2-D convolutions along different axes
(Avetisian, "Volumetric Medical Image Segmentation with Deep Convolutional Neural Networks",
seed 003).

What the paper says (Sec. 2.1, Figs. 1-2, Table 1):

- a U-Net: convolutional blocks, max-pool downsampling after which the next block doubles the
  channels, "upconvolutions" that upscale, concatenation with the contracting block of the same
  size, another convolutional block; input sizes must be multiples of 2^3 (Sec. 2.2), i.e.
  three poolings and four levels (``features`` 30, 60, 120, 240; 30 channels in the first
  convolutional layer, Table 1);
- **the factorisation** (Sec. 2.1, Fig. 2): "a convolutional block consists of four 2D
  convolutions along different axis ... a single 3x3x3 convolution has 27 parameters, while
  4 3x3 convolutions have only 36": a 3-D convolution is replaced by 3x3 convolutions in
  different planes of the volume, not by 2-D + 1-D. Fig. 2 (the exact axis order) is not in the
  text we have; the default ``kernels`` cycle through the three orthogonal planes and back to the
  first, ``(1,3,3), (3,1,3), (3,3,1), (1,3,3)`` in ``(D, H, W)`` order: axial, coronal,
  sagittal, axial. The (2+1)-D split named in issue 17 (a 3x3x1 then a 1x1x3 convolution) is
  ``kernels: [[1, 3, 3], [3, 1, 1]]``; any per-axis kernel list is accepted;
- each convolution is followed by ReLU and dropout (keep probability 0.85, so ``dropout``
  0.15); no batch normalisation ("not beneficial ... numerical instabilities", Sec. 2.1);
- dropout right before the output layer (Sec. 2.2); a 1x1x1 output convolution to K classes
  with softmax; the loss is 1 - IoU over the one-hot classes (``multiclass_iou`` in
  ``medseg.training.losses``, the default here; the paper leaves the background class out of the sum,
  ``y_{1:}``, and medseg's loss averages over all K classes).
- training hyper-parameters (Table 1, for the trainer): Adam, lr 7.6e-5, betas (0.9, 0.999),
  L2 weight 3e-4, gradient clipping at 1.0.

Deviations, and why:

- the upconvolution: the paper's "1x1 kernel which upscales the data" is read as
  nearest-neighbour upsampling followed by a 1x1x1 convolution halving the channels (a
  stride-2 transposed convolution with a 1x1 kernel would leave every other voxel zero);
- inputs whose size is not a multiple of 8 are padded and the logits cropped back (the paper
  required multiples of 8);
- patch ``(D, H, W) = (32, 128, 128)``: the paper split images "into blocks" of unstated size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from medseg.models.blocks import ConvNormAct, Down, SegmentationNet, Up, check_common, conv_op


@dataclass(frozen=True)
class FactorizedUNetConfig:
    """Config key ``models.<key>`` with ``arch: factorized_unet``.

    Attributes:
        arch: registry key.
        in_channels: input channels (modalities); set by the trainer from the task.
        out_channels: K logits (labels + background, softmax); set by the trainer.
        spatial_dims: 3 (the factorisation is over the axes of a volume).
        features: channels per level, finest first (30 doubling per level).
        kernels: the convolutions of one block, each a ``(kD, kH, kW)`` kernel (odd sizes).
        dropout: dropout probability after every convolution and before the output layer (0.15).
        act: ``relu`` (paper), ``leakyrelu`` or ``prelu``.
        norm: ``none`` (paper), ``batch`` or ``instance``.
        channels_last: run in ``channels_last_3d`` memory format.
    """

    arch: str = "factorized_unet"
    in_channels: int = 4
    out_channels: int = 4
    spatial_dims: int = 3
    features: tuple[int, ...] = (30, 60, 120, 240)
    kernels: tuple[tuple[int, ...], ...] = ((1, 3, 3), (3, 1, 3), (3, 3, 1), (1, 3, 3))
    dropout: float = 0.15
    act: str = "relu"
    norm: str = "none"
    channels_last: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernels", tuple(tuple(int(v) for v in k) for k in self.kernels))
        if self.spatial_dims != 3:
            raise ValueError(f"models.spatial_dims must be 3 for factorized_unet (it factorises 3-D "
                             f"convolutions), got {self.spatial_dims}")
        if not self.kernels or any(len(k) != 3 or min(k) < 1 or any(v % 2 == 0 for v in k) for k in self.kernels):
            raise ValueError(f"models.kernels must be a non-empty list of 3 odd sizes (kD, kH, kW), got {self.kernels}")
        if len(self.features) < 2 or min(self.features) < 1:
            raise ValueError(f"models.features must be >= 2 positive channel counts, got {self.features}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"models.dropout must be in [0, 1), got {self.dropout}")
        check_common(self)

    @property
    def divisor(self) -> int:
        """Total stride: windows and patches are multiples of it."""
        return 2 ** (len(self.features) - 1)


class FactorizedBlock(nn.Sequential):
    """The convolutions of ``kernels`` in turn (first ``cin -> cout``, then ``cout -> cout``),
    each followed by [norm], activation and dropout (Fig. 2)."""

    def __init__(self, cin: int, cout: int, cfg: FactorizedUNetConfig) -> None:
        layers = []
        for i, k in enumerate(cfg.kernels):
            conv = ConvNormAct(3, cin if i == 0 else cout, cout, k, norm=cfg.norm, act=cfg.act)
            layers += [*conv] + ([nn.Dropout(cfg.dropout)] if cfg.dropout > 0 else [])
        super().__init__(*layers)


class FactorizedUNet(SegmentationNet):
    """``(B, C, D, H, W)`` -> logits ``(B, K, D, H, W)``."""


    def __init__(self, cfg: FactorizedUNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.spatial_dims = 3
        self.channels_last = cfg.channels_last
        f = cfg.features
        self.divisor = cfg.divisor
        self.enc = nn.ModuleList(FactorizedBlock(cfg.in_channels if i == 0 else f[i - 1], f[i], cfg)
                                 for i in range(len(f)))
        self.pool = Down(3, 1, kind="max")
        self.up = nn.ModuleList(Up(3, f[i + 1], f[i], "nearest_conv", 1) for i in range(len(f) - 2, -1, -1))
        self.dec = nn.ModuleList(FactorizedBlock(2 * f[i], f[i], cfg) for i in range(len(f) - 2, -1, -1))
        self.drop = nn.Dropout(cfg.dropout)
        self.head = conv_op(3)(f[0], cfg.out_channels, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            x = block(self.pool(x) if i else x)
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], 1))
        return self.head(self.drop(x))
