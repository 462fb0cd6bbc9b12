"""3-D fully convolutional DenseNet, "Tiramisu" (Eschen, "Semantic segmentation of the prostate in
3D MRI", seed 001, Sec. 3.2-3.3, 4.4 and Table 1; after Jégou et al. 2017, the seed's [18]).

Architecture (Sec. 4.4, Fig. 3), with ``n_pool = (len(layers_per_block) - 1) / 2``:

- a first 3x3x3 convolution with ``first_features`` (48) filters;
- downsampling path: ``n_pool`` dense blocks, each followed by a transition down; a dense block
  of ``n`` layers concatenates its input with the ``growth_rate`` (16) new feature maps of every
  layer (eq. 2), a layer being BN -> ReLU -> 3x3x3 convolution -> dropout (Sec. 3.2); the block's
  full output is kept for the long skip connection;
- a bottleneck dense block;
- upsampling path: ``n_pool`` times a transition up (a stride-2 3x3x3 transposed convolution of
  only the *new* feature maps of the previous dense block, Jégou et al. Sec. 3.1), concatenation
  with the skip connection of the same size, and a dense block;
- a 1x1x1 convolution to the K logits (sigmoid in the paper, binary prostate).

Defaults are the proposed "Tiramisu3D p3a" (Sec. 5.3, Conclusion; Dice 0.898 on PROMISE12):
3 pooling layers, layers per block 7, 8, 9, 12, 15, 16, 17 as printed (the paper's p4a is
``(9, 10, 12, 15, 17, 20, 17, 15, 12)``, p3b twelve layers everywhere). Table 1's parameter
counts are reproduced by this implementation for ``in_channels = out_channels = 1`` *without*
the batch-norm scale/shift parameters: p4a 49,386,305 vs 49,382,353 and p3b 23,489,857 vs
23,487,169 (both within 0.02 %; the test suite checks this). The printed p3a list gives
22,964,561 vs 22,692,289 (1.2 % more), so the list printed for p3a is probably not exactly the
network that was trained; it is kept as the default because it is what the paper states.
Sub-volumes of 64x64x16 voxels (``patch_size`` ``(D, H, W) =
(16, 64, 64)``, Sec. 4.1). Training: binary cross-entropy, Adam, lr 1e-4, weight decay 1e-4,
batch 2 per GPU; medseg's closest loss is ``dice_bce`` (the default here).

**Inference** (Sec. 4.1, 5.3): sliding sub-volumes of 64x64x16 with stride 32x32x8 (half the
window) whose probabilities are *averaged*, i.e. ``constant`` blending with overlap 0.5 in
medseg's stitching engine (``default_blending``).

Deviations, and why:

- transition down is BN -> ReLU -> 1x1x1 convolution -> dropout -> max-pool as in Jégou et al.
  (the seed says only "dense blocks each followed by max pooling"; Table 1's counts are only
  reproduced with the 1x1x1 convolution included);
- dropout 0.2 (Jégou et al.; the seed gives no rate);
- inputs whose size is not a multiple of ``2 ** n_pool`` are padded and the logits cropped back;
- ``spatial_dims: 2`` gives Jégou et al.'s 2-D FC-DenseNet.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from medseg.models.blocks import ConvNormAct, Down, SegmentationNet, Up, check_common, conv_op


@dataclass(frozen=True)
class Tiramisu3DConfig:
    """Config key ``models.<key>`` with ``arch: tiramisu3d``.

    Attributes:
        arch: registry key.
        in_channels: input channels (modalities); set by the trainer from the task.
        out_channels: K logits; set by the trainer.
        spatial_dims: 3 (the paper) or 2 (Jégou et al.'s FC-DenseNet).
        first_features: filters of the first convolution (48).
        growth_rate: new feature maps per dense layer (16).
        layers_per_block: dense layers per block: ``n_pool`` down, bottleneck, ``n_pool`` up
            (odd length; p3a ``(7, 8, 9, 12, 15, 16, 17)``).
        dropout: dropout probability after every convolution of the dense layers and transitions.
        norm: ``batch`` (paper), ``instance`` or ``none``.
        channels_last: run in ``channels_last_3d`` memory format.
    """

    arch: str = "tiramisu3d"
    in_channels: int = 4
    out_channels: int = 3
    spatial_dims: int = 3
    first_features: int = 48
    growth_rate: int = 16
    layers_per_block: tuple[int, ...] = (7, 8, 9, 12, 15, 16, 17)
    dropout: float = 0.2
    norm: str = "batch"
    channels_last: bool = False

    def __post_init__(self) -> None:
        lp = self.layers_per_block
        if len(lp) < 3 or len(lp) % 2 == 0 or min(lp) < 1:
            raise ValueError(f"models.layers_per_block must be an odd number (>= 3) of positive layer counts "
                             f"(down blocks, bottleneck, up blocks), got {lp}")
        if self.first_features < 1 or self.growth_rate < 1:
            raise ValueError(f"models.first_features and models.growth_rate must be >= 1, "
                             f"got {self.first_features}, {self.growth_rate}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"models.dropout must be in [0, 1), got {self.dropout}")
        check_common(self)

    @property
    def divisor(self) -> int:
        """Total stride (``2 ** n_pool``): windows and patches are multiples of it."""
        return 2 ** (len(self.layers_per_block) // 2)


class DenseBlock(nn.Module):
    """``n`` pre-activation layers; each sees the concatenation of the block input and all earlier
    layers' outputs. Returns (input + all new maps, only the new maps)."""

    def __init__(self, spatial_dims: int, cin: int, n: int, growth: int, dropout: float, norm: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ConvNormAct(spatial_dims, cin + i * growth, growth, 3, norm=norm, act="relu", dropout=dropout,
                        preact=True, bias=True)
            for i in range(n))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = []
        for layer in self.layers:
            y = layer(x)
            new.append(y)
            x = torch.cat([x, y], 1)
        return x, torch.cat(new, 1)


class Tiramisu3D(SegmentationNet):
    """FC-DenseNet: ``(B, C, D, H, W)`` -> logits ``(B, K, D, H, W)`` (or 2-D)."""

    def __init__(self, cfg: Tiramisu3DConfig) -> None:
        super().__init__()
        self.cfg = cfg
        nd = self.spatial_dims = cfg.spatial_dims
        self.channels_last = cfg.channels_last
        lp, k = cfg.layers_per_block, cfg.growth_rate
        n_pool = len(lp) // 2
        self.divisor = cfg.divisor
        self.first = conv_op(nd)(cfg.in_channels, cfg.first_features, 3, padding=1)
        c = cfg.first_features
        self.down_blocks, self.trans_down, skip_ch = nn.ModuleList(), nn.ModuleList(), []
        for i in range(n_pool):
            self.down_blocks.append(DenseBlock(nd, c, lp[i], k, cfg.dropout, cfg.norm))
            c += lp[i] * k
            skip_ch.append(c)
            self.trans_down.append(nn.Sequential(
                ConvNormAct(nd, c, c, 1, norm=cfg.norm, act="relu", dropout=cfg.dropout, preact=True, bias=True),
                Down(nd, c, kind="max")))
        self.bottleneck = DenseBlock(nd, c, lp[n_pool], k, cfg.dropout, cfg.norm)
        self.trans_up, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        new = lp[n_pool] * k
        for i in range(n_pool):
            self.trans_up.append(Up(nd, new, new, "transpose", 3))
            c = new + skip_ch[-1 - i]
            nl = lp[n_pool + 1 + i]
            self.up_blocks.append(DenseBlock(nd, c, nl, k, cfg.dropout, cfg.norm))
            new, c = nl * k, c + nl * k
        self.head = conv_op(nd)(c, cfg.out_channels, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        skips = []
        for block, trans in zip(self.down_blocks, self.trans_down):
            x, _ = block(x)
            skips.append(x)
            x = trans(x)
        _, new = self.bottleneck(x)
        for trans, block in zip(self.trans_up, self.up_blocks):
            x = torch.cat([trans(new), skips.pop()], 1)
            x, new = block(x)
        return self.head(x)
