import numpy as np
import pytest

from medseg.labels import ConventionError, detect_convention, labels_to_regions, regions_to_labels, validate_labels


def test_detect_convention():
    assert detect_convention([0, 1, 2, 4]) == "2021"
    assert detect_convention([0, 1, 3]) == "2023"
    assert detect_convention([0, 2]) is None
    with pytest.raises(ConventionError, match="fit neither"):
        detect_convention([0, 3, 4])
    with pytest.raises(ConventionError):
        detect_convention([0, 5])


def test_regions_round_trip_both_conventions():
    lab21 = np.array([0, 1, 2, 4, 4, 2], np.uint8)
    reg = labels_to_regions(lab21, "2021")
    assert reg.tolist() == [[0, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0], [0, 0, 0, 1, 1, 0]]
    assert regions_to_labels(reg, "2021").tolist() == lab21.tolist()
    assert regions_to_labels(reg, "2023").tolist() == [0, 1, 2, 3, 3, 2]


def test_regions_to_labels_enforces_nesting():
    # ET predicted outside WT still becomes ET (ET wins), TC without WT becomes NCR
    reg = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], np.uint8)
    assert regions_to_labels(reg, "2021").tolist() == [1, 4, 2]


def test_validate_labels_names_the_other_convention():
    with pytest.raises(ConventionError, match="look like BraTS 2023"):
        validate_labels(np.array([0, 1, 3]), "2021")
    validate_labels(np.array([0, 1, 2, 4]), "2021")
