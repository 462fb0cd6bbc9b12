"""Building blocks shared by the segmentation networks, parameterised by dimensionality.

The style follows MIC-DKFZ dynamic-network-architectures (``ConvDropoutNormReLU`` takes
``conv_op=nn.Conv3d``) and MONAI's ``get_conv_layer``: every block receives ``spatial_dims``
(2 or 3) and picks the ``nn.Conv2d``/``nn.Conv3d`` family from it, so one network file serves
2-D and 3-D. Tensors are ``(B, C, H, W)`` or ``(B, C, D, H, W)``; kernel sizes and strides are
per spatial axis in the same order (``D, H, W``) when given as tuples.

Also owns :class:`SegmentationNet`, the base class that pads inputs whose size is not a
multiple of the network's total stride and crops the logits back, so no caller has to.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from medseg.config import with_options

Size = int | Sequence[int]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BATCH = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
NORMS = ("batch", "instance", "none")
ACTS = ("relu", "leakyrelu", "prelu")
UPSAMPLES = ("nearest_conv", "transpose")


def check_dims(spatial_dims: int, key: str = "spatial_dims") -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"{key} must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def conv_op(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _CONV[check_dims(spatial_dims)]


def _tup(v: Size, n: int) -> tuple[int, ...]:
    t = (v,) * n if isinstance(v, int) else tuple(int(x) for x in v)
    if len(t) != n:
        raise ValueError(f"kernel/stride {v!r} must have {n} entries (one per spatial axis)")
    return t


def make_norm(kind: str, spatial_dims: int, channels: int, momentum: float = 0.1) -> nn.Module:
    """``batch`` (running-average ``momentum`` as in ``nn.BatchNorm``), ``instance`` (affine) or ``none``."""
    if kind == "batch":
        return _BATCH[spatial_dims](channels, momentum=momentum)
    if kind == "instance":
        return _INSTANCE[spatial_dims](channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {list(NORMS)}, got {kind!r}")


def make_act(kind: str, channels: int) -> nn.Module:
    """``relu``, ``leakyrelu`` (slope 0.01, nnU-Net) or ``prelu`` (one learned slope per channel)."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leakyrelu":
        return nn.LeakyReLU(0.01, inplace=True)
    if kind == "prelu":
        return nn.PReLU(channels)
    raise ValueError(f"act must be one of {list(ACTS)}, got {kind!r}")


@dataclass(frozen=True)
class ConvStyle:
    """How a :class:`ConvNormAct` normalises, activates and regularises its convolution.

    Attributes:
        norm: ``batch``, ``instance`` or ``none`` (:func:`make_norm`).
        act: ``relu``, ``leakyrelu`` or ``prelu`` (:func:`make_act`).
        dropout: dropout probability after the convolution, in [0, 1] (0: no dropout layer).
        preact: pre-activation order norm -> activation -> convolution (DenseNet layers).
        bias: convolution bias (``None``: only without a norm, ``norm == "none"``).
        norm_momentum: running-average momentum of batch norm (as in ``nn.BatchNorm``).
    """

    norm: str = "batch"
    act: str = "relu"
    dropout: float = 0.0
    preact: bool = False
    bias: bool | None = None
    norm_momentum: float = 0.1

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {self.norm!r}")
        if self.act not in ACTS:
            raise ValueError(f"act must be one of {list(ACTS)}, got {self.act!r}")
        if not 0 <= self.dropout <= 1:
            raise ValueError(f"dropout must be in [0, 1], got {self.dropout}")


class ConvNormAct(nn.Sequential):
    """Convolution -> [dropout] -> norm -> activation, or the pre-activation order
    norm -> activation -> convolution -> [dropout] (``preact=True``, DenseNet layers).

    "Same" padding (``(k - 1) // 2`` per axis), so only ``stride`` changes the size.

    Args:
        spatial_dims: 2 or 3.
        cin, cout: input and output channels.
        kernel, stride: per spatial axis (``D, H, W``) or one int for all.
        style: norm, activation, dropout, order, bias and norm momentum (:class:`ConvStyle`;
            default: its defaults, batch norm and ReLU).
        **options: fields of :class:`ConvStyle` overriding ``style`` (``norm="instance"``, ...); an
            unknown name raises ``ValueError`` listing the valid ones.
    """

    def __init__(self, spatial_dims: int, cin: int, cout: int, kernel: Size = 3, stride: Size = 1,
                 style: ConvStyle | None = None, **options) -> None:
        k, s = _tup(kernel, spatial_dims), _tup(stride, spatial_dims)
        style = with_options(ConvStyle() if style is None else style, options, "ConvNormAct")
        conv = conv_op(spatial_dims)(cin, cout, k, s, padding=tuple((i - 1) // 2 for i in k),
                                     bias=(style.norm == "none") if style.bias is None else style.bias)
        drop = [nn.Dropout(style.dropout)] if style.dropout > 0 else []
        if style.preact:
            super().__init__(make_norm(style.norm, spatial_dims, cin, style.norm_momentum), make_act(style.act, cin),
                             conv, *drop)
        else:
            super().__init__(conv, *drop, make_norm(style.norm, spatial_dims, cout, style.norm_momentum),
                             make_act(style.act, cout))


class Down(nn.Module):
    """Halve every spatial axis: ``"max"`` pooling (channels kept) or a stride-2 :class:`ConvNormAct`
    (``"conv"``, Springenberg et al.'s all-convolutional choice that Kayalibay et al. use)."""

    def __init__(self, spatial_dims: int, cin: int, cout: int | None = None, kind: str = "max", **conv_kw) -> None:
        super().__init__()
        if kind == "max":
            if cout not in (None, cin):
                raise ValueError(f"max-pool downsampling keeps the channels ({cin}), got cout={cout}")
            self.op: nn.Module = _MAXPOOL[check_dims(spatial_dims)](2)
        elif kind == "conv":
            self.op = ConvNormAct(spatial_dims, cin, cout or cin, 3, 2, **conv_kw)
        else:
            raise ValueError(f"down must be 'max' or 'conv', got {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Up(nn.Module):
    """Double every spatial axis.

    ``"nearest_conv"``: nearest-neighbour upsampling then a convolution of size ``kernel``
    (the "deconvolution" of Kayalibay et al., Appendix A and Fig. 16; no checkerboard artefacts).
    ``"transpose"``: a transposed convolution of size ``kernel`` and stride 2 (FC-DenseNet uses 3).
    """

    def __init__(self, spatial_dims: int, cin: int, cout: int, kind: str = "nearest_conv", kernel: int = 3,
                 bias: bool = True) -> None:
        super().__init__()
        check_dims(spatial_dims)
        if kind == "nearest_conv":
            self.up: nn.Module | None = nn.Upsample(scale_factor=2, mode="nearest")
            self.conv = _CONV[spatial_dims](cin, cout, kernel, padding=(kernel - 1) // 2, bias=bias)
        elif kind == "transpose":
            self.up = None
            # output = 2 * input for any odd kernel: padding (k-1)/2, output_padding 1
            self.conv = _CONVT[spatial_dims](cin, cout, kernel, stride=2, padding=(kernel - 1) // 2,
                                             output_padding=1 if kernel % 2 else 0, bias=bias)
        else:
            raise ValueError(f"up must be one of {list(UPSAMPLES)}, got {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x) if self.up is not None else x)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the spatial axes of ``(B, C, *spatial)`` at their end up to a multiple of ``multiple``
    (reflect where the axis is long enough, else replicate)."""
    spatial = x.shape[2:]
    pads = [(-s) % multiple for s in spatial]
    if not any(pads):
        return x
    mode = "reflect" if all(p < s for p, s in zip(pads, spatial)) else "replicate"
    flat = [v for p in reversed(pads) for v in (0, p)]  # F.pad: last axis first
    return F.pad(x, flat, mode=mode)


def crop_to(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Crop the spatial axes of ``(B, C, *spatial)`` back to ``spatial`` (from the start)."""
    return x[(slice(None), slice(None), *(slice(0, s) for s in spatial))]


class SegmentationNet(nn.Module):
    """Base class of medseg's own networks: logits ``(B, K, *spatial)`` for ``(B, C, *spatial)``.

    Subclasses set ``spatial_dims`` and ``divisor`` (total stride; inputs are padded up to a multiple
    of it and logits cropped back) in ``__init__``, and implement :meth:`forward_padded`. What the
    paper trained and blended with (loss, blending, patch) is the registry entry's
    (:data:`medseg.models.REGISTRY`), not the network's: networks take any input size.
    """

    spatial_dims: int
    divisor: int
    channels_last: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"{type(self).__name__} expects (B, C, {'D, ' if self.spatial_dims == 3 else ''}H, W) "
                             f"input, got shape {tuple(x.shape)}")
        spatial = x.shape[2:]
        x = pad_to_multiple(x, self.divisor)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d if self.spatial_dims == 3 else torch.channels_last)
        return crop_to(self.forward_padded(x), spatial)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def check_common(cfg) -> None:
    """Validate the fields every medseg network config shares (``in/out_channels``, ``spatial_dims``)."""
    check_dims(cfg.spatial_dims, f"models.{cfg.arch}.spatial_dims")
    for key in ("in_channels", "out_channels"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"models.{key} must be >= 1, got {getattr(cfg, key)}")


def check_patch(cfg, patch, key: str = "patch_size") -> None:
    """Raise ``ValueError`` naming ``key`` unless ``patch`` has one size per spatial axis of ``cfg``, each
    a multiple of the network's total stride (``cfg.divisor``, 1 for networks that pad any input)."""
    divisor = getattr(cfg, "divisor", 1)
    if len(patch) != cfg.spatial_dims or any(int(s) < 1 or int(s) % divisor for s in patch):
        raise ValueError(f"{key} must be {cfg.spatial_dims} sizes, each a multiple of {divisor} "
                         f"(the {cfg.arch} network's total stride), got {list(patch)}")
