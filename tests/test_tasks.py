"""Task definitions: label maps <-> targets, decoding regions, presets and the BraTS convention guard."""
import numpy as np
import pytest
import torch

from medseg.training.losses import LOSSES
from medseg.tasks.definition import LabelError, Task
from medseg.tasks.presets import brats_task
from medseg.tasks.presets import convention_mismatch, dataset_convention, detect_convention


def test_brats_regions_encode_and_decode_both_conventions():
    t21, t23 = brats_task("b", "2021"), brats_task("b", "2023")
    lab21 = np.array([0, 1, 2, 4, 4, 2], np.uint8)
    reg = t21.encode(lab21)
    assert reg.tolist() == [[0, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0], [0, 0, 0, 1, 1, 0]]  # WT, TC, ET
    assert t21.decode(reg.astype(float)).tolist() == lab21.tolist()
    assert t23.decode(reg.astype(float)).tolist() == [0, 1, 2, 3, 3, 2]
    assert t21.region_order() == [("WT", 2), ("TC", 1), ("ET", 4)]
    # nesting is enforced: ET outside WT is still ET, TC without WT is NCR
    assert t21.decode(np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)).tolist() == [1, 4, 2]
    assert t21.channels == ("WT", "TC", "ET") and t21.activation == "sigmoid"


def test_softmax_labels_encode_decode_and_any_values():
    t = Task("prostate", ("t2", "adc"), {"PZ": 1, "TZ": 7})
    assert t.target_kind == "labels" and t.n_outputs == 3 and t.channels == ("background", "PZ", "TZ")
    labels = np.array([0, 7, 1, 7], np.uint8)
    assert t.encode(labels).tolist() == [0, 2, 1, 2]
    probs = np.eye(3)[[0, 2, 1, 2]].T  # (K, N)
    assert t.decode(probs).tolist() == labels.tolist()
    with pytest.raises(LabelError, match=r"case x, file y: label values \[3\] are not in the task"):
        t.check_values([0, 1, 3], "case x, file y: ")
    with pytest.raises(ValueError, match="expected 3 output channels"):
        t.decode(np.zeros((2, 4)))


def test_task_definition_errors_name_the_key():
    with pytest.raises(ValueError, match="labels values must be distinct"):
        Task("d", ("t1",), {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="modalities"):
        Task("d", (), {"a": 1})
    with pytest.raises(ValueError, match=r"regions.R must list labels"):
        Task("d", ("t1",), {"a": 1}, {"R": ("zzz",)})
    # a region holding two labels no smaller region separates cannot be decoded back
    with pytest.raises(ValueError, match="cannot be turned back into labels"):
        Task("d", ("t1",), {"a": 1, "b": 2}, {"fg": ("a", "b")})
    assert Task.from_dict(brats_task("x", "2023").to_dict()) == brats_task("x", "2023")


def test_brats_convention_is_one_per_dataset():
    assert detect_convention([0, 1, 2, 4]) == "2021" and detect_convention([0, 1, 3]) == "2023"
    assert detect_convention([0, 2]) is None
    with pytest.raises(LabelError, match="fit neither"):
        detect_convention([0, 3, 4])
    # a case without ET fits both: it takes the dataset's convention, decided by the others
    assert dataset_convention({"a": "2023", "b": "2023", "c": "2021"}) == "2023"
    assert dataset_convention({}, layout_hint="2023") == "2023"
    assert dataset_convention({"a": "2023"}, configured="2021") == "2021"
    assert convention_mismatch([0, 1, 2], "2023") is None
    assert "BraTS 2021 labels but the dataset is BraTS 2023" in convention_mismatch([0, 1, 4], "2023")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_takes_regions_and_labels_and_has_its_minimum_at_the_truth(name):
    torch.manual_seed(0)
    loss = LOSSES[name]
    labels = torch.randint(0, 3, (2, 8, 8))
    regions = torch.stack([labels > 0, labels == 2], 1).float()
    for target, k in ((labels, 3), (regions, 2)):
        onehot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float() if target.ndim == 3 else target
        perfect = (onehot * 2 - 1) * 12.0  # confident logits of the truth
        rand = torch.randn(2, k, 8, 8, requires_grad=True)
        lr = loss(rand, target)
        lr.backward()
        assert torch.isfinite(lr) and rand.grad.abs().sum() > 0
        assert loss(perfect, target) < lr
