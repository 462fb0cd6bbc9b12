"""U-Net decoder on any timm ``features_only`` encoder (resnet, efficientnet, convnext, regnet ...).

Input ``(B, C, H, W)`` with ``C = modalities x context slices`` (2-D / 2.5-D); output logits
``(B, K, H, W)``: K regions (WT, TC, ET; sigmoid) or K labels (softmax). Inputs whose size is not
a multiple of the encoder's total stride are padded (reflect) and the output cropped back.
Optional deep supervision returns extra logits from coarser decoder stages, each trained with its
own weighted auxiliary loss (deeply-supervised nets, Lee et al. 2015; nnU-Net). This is *not*
Kayalibay et al. (seed 004), whose network sums upsampled segmentation maps into one output:
that is ``unet3d`` (``medseg.models.unet3d``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelConfig:
    """Config key ``models.<key>``.

    Attributes:
        arch: registry key (``timm_unet``).
        encoder: any timm model name with ``features_only`` support.
        in_channels: modalities x context slices.
        out_channels: regions (3) or labels.
        decoder_channels: channels per decoder stage, deepest first.
        pretrained: load timm's weights (never downloaded: needs ``weights`` or a local cache).
        weights: optional local file with encoder weights (state dict).
        deep_supervision: also return logits of the coarser decoder stages while training.
    """

    arch: str = "timm_unet"
    encoder: str = "resnet18"
    in_channels: int = 12
    out_channels: int = 3
    decoder_channels: tuple[int, ...] = (128, 64, 48, 32, 16)
    pretrained: bool = False
    weights: str | None = None
    deep_supervision: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def spatial_dims(self) -> int:
        """2: slices (2-D) or slices with context channels (2.5-D)."""
        return 2


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class TimmUNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.spatial_dims = cfg.spatial_dims
        try:
            self.encoder = timm.create_model(cfg.encoder, features_only=True, pretrained=False, in_chans=cfg.in_channels, **cfg.extra)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"models.encoder {cfg.encoder!r} cannot be built as a features_only timm encoder: {e}") from e
        if cfg.weights:
            state = torch.load(cfg.weights, map_location="cpu", weights_only=True)
            missing, unexpected = self.encoder.load_state_dict(state, strict=False)
            if len(missing) == len(self.encoder.state_dict()):
                raise ValueError(f"models.weights {cfg.weights}: no tensor matches encoder {cfg.encoder}")
        elif cfg.pretrained:
            raise ValueError("models.pretrained: true needs models.weights (a local file); medseg never downloads weights")
        chans = self.encoder.feature_info.channels()
        self.reductions = self.encoder.feature_info.reduction()
        self.stride = max(self.reductions)
        dec = list(cfg.decoder_channels)
        if len(dec) < len(chans):
            raise ValueError(f"models.decoder_channels needs >= {len(chans)} entries for {cfg.encoder}, got {len(dec)}")
        self.blocks = nn.ModuleList()
        cin = chans[-1]
        skips = chans[:-1][::-1] + [0]
        for i, skip in enumerate(skips):
            self.blocks.append(ConvBlock(cin + skip, dec[i]))
            cin = dec[i]
        self.head = nn.Conv2d(cin, cfg.out_channels, 1)
        self.aux = nn.ModuleList(nn.Conv2d(dec[i], cfg.out_channels, 1) for i in range(1, len(skips) - 1)) if cfg.deep_supervision else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        feats = self.encoder(x)
        y = feats[-1]
        skips = feats[:-1][::-1]
        aux_out = []
        for i, block in enumerate(self.blocks):
            target = skips[i].shape[-2:] if i < len(skips) else x.shape[-2:]
            y = F.interpolate(y, size=target, mode="bilinear", align_corners=False)
            if i < len(skips):
                y = torch.cat([y, skips[i]], 1)
            y = block(y)
            if self.aux is not None and self.training and 1 <= i <= len(self.aux):
                aux_out.append(self.aux[i - 1](y))
        out = self.head(y)[..., :h, :w]
        if aux_out:
            size = x.shape[-2:]
            return [out] + [F.interpolate(a, size=size, mode="bilinear", align_corners=False)[..., :h, :w] for a in aux_out]
        return out
