"""timm U-Net: encoder families, odd input sizes, deep supervision, losses."""
import pytest
import torch

from medseg.training.losses import LOSSES, get_loss
from medseg.models.unet import ModelConfig
from medseg.models import build_model


@pytest.mark.parametrize("encoder", ["resnet10t", "efficientnet_b0", "convnext_atto", "regnetx_002"])
def test_encoder_families_forward_backward_any_size(encoder):
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder=encoder, in_channels=6, out_channels=3, decoder_channels=(32, 24, 16, 12, 8)))
    x = torch.randn(2, 6, 45, 37)  # not divisible by the encoder stride: padded, never rejected
    y = model(x)
    assert y.shape == (2, 3, 45, 37)
    y.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_deep_supervision_outputs_only_in_training():
    model = build_model(ModelConfig(encoder="resnet10t", in_channels=4, deep_supervision=True, decoder_channels=(16,) * 5))
    outs = model(torch.randn(1, 4, 64, 64))
    assert isinstance(outs, list) and len(outs) >= 2 and all(o.shape == (1, 3, 64, 64) for o in outs)
    model.eval()
    assert model(torch.randn(1, 4, 64, 64)).shape == (1, 3, 64, 64)


def test_bad_model_settings_are_clear_errors():
    with pytest.raises(ValueError, match="models.arch"):
        build_model(ModelConfig(arch="vnet"))
    with pytest.raises(ValueError, match="never downloads"):
        build_model(ModelConfig(encoder="resnet10t", pretrained=True))
    with pytest.raises(ValueError, match="training.loss"):
        get_loss("focal")


def test_losses_zero_for_perfect_and_positive_otherwise():
    target = torch.zeros(2, 3, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    perfect = (target * 2 - 1) * 50
    for name in ("dice_bce", "jaccard"):
        assert LOSSES[name](perfect, target) < 1e-3
        assert LOSSES[name](-perfect, target) > 0.5
    cls = torch.zeros(2, 8, 8, dtype=torch.long)
    cls[:, 2:6, 2:6] = 2
    logits = torch.nn.functional.one_hot(cls, 3).movedim(-1, 1).float() * 50
    assert LOSSES["multiclass_iou"](logits, cls) < 1e-3
    assert LOSSES["weighted_ce"](logits, cls) < 1e-3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_preflight_and_fallback_on_cpu_machine(monkeypatch):
    from medseg.inference.device import check_cuda, resolve_device

    with pytest.raises(RuntimeError, match="set training.device: auto"):
        check_cuda()
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a GPU allocated by SLURM that CUDA cannot use
    assert resolve_device("auto").type == "cpu"
