"""Bone masks from labels and from HU, against closed-form synthetic anatomy; Dice against counted overlaps."""

from __future__ import annotations

import numpy as np
import pytest

from xraysyn.data.bone_mask import (
    BONE_THRESHOLD_HU,
    bone_label_values,
    bone_mask_from_hu,
    bone_mask_from_labels,
    dice,
    read_structures_table,
)

SOFT_TISSUE_HU = 40.0
TRABECULAR_HU = 150.0  # below the 350 HU threshold: must be recovered by the cavity filling
CORTICAL_HU = 1200.0
CARTILAGE_HU = 120.0
STRUCTURES = {3: "heart", 5: "vertebrae_T5", 7: "costal_cartilages", 9: "rib_left_4", 11: "clavicula_right"}


def _grid(shape=(28, 28, 28), spacing=(1.0, 1.0, 1.0)):
    axes = [np.arange(n) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij")


def _synthetic_ct():
    """A vertebra (cortical shell around trabecular bone), a rib (solid rod), cartilage and a speck."""
    x, y, z = _grid()
    hu = np.full(x.shape, SOFT_TISSUE_HU, dtype=np.float32)
    labels = np.zeros(x.shape, dtype=np.int16)
    radius = np.sqrt((x - 10) ** 2 + (y - 10) ** 2 + (z - 12) ** 2)
    vertebra = radius <= 7.0
    hu[vertebra] = TRABECULAR_HU
    hu[vertebra & (radius > 5.0)] = CORTICAL_HU
    labels[vertebra] = 5
    rod = ((x - 22) ** 2 + (y - 20) ** 2 <= 2.5**2) & (z >= 4) & (z <= 24)
    hu[rod] = CORTICAL_HU
    labels[rod] = 9
    cartilage = ((x - 22) ** 2 + (y - 8) ** 2 <= 2.5**2) & (z >= 4) & (z <= 24)
    hu[cartilage] = CARTILAGE_HU
    labels[cartilage] = 7
    hu[2, 25, 25] = 900.0  # a 1-voxel calcification: not bone
    return hu, labels, vertebra | rod


def test_labels_select_bone_structures_only():
    _, labels, truth = _synthetic_ct()
    mask = bone_mask_from_labels(labels, STRUCTURES)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, truth)
    assert bone_label_values(STRUCTURES) == [5, 9, 11]


def test_threshold_recovers_closed_form_bone():
    hu, labels, truth = _synthetic_ct()
    mask = bone_mask_from_hu(hu, (1.0, 1.0, 1.0))
    assert not mask[2, 25, 25]  # the speck is dropped
    assert not mask[labels == 7].any()  # cartilage stays tissue
    assert mask[10, 10, 12]  # trabecular centre filled although below the threshold
    # only the sub-voxel boundary of the curved shapes may disagree
    assert dice(mask, truth) > 0.97
    raw = hu > BONE_THRESHOLD_HU
    assert dice(raw, truth) < dice(mask, truth)  # morphology helps on this anatomy


def test_threshold_validation():
    with pytest.raises(ValueError, match="spacing_mm"):
        bone_mask_from_hu(np.zeros((4, 4, 4)), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="3-D"):
        bone_mask_from_hu(np.zeros((4, 4)))


def test_dice_against_counted_overlap():
    a = np.zeros((20, 1, 1), bool)
    b = np.zeros((20, 1, 1), bool)
    a[0:10] = True  # 10 voxels
    b[6:12] = True  # 6 voxels, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / (10 + 6))
    assert dice(a, a) == 1.0
    assert dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 2))) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        dice(a, np.zeros((3, 3, 3), bool))


def test_structures_table_formats(tmp_path):
    table = tmp_path / "structures.csv"
    table.write_text(
        "group,original_idx,structure,id\n"
        "organs,1,spleen,1\nribs,26,costal_cartilages,118\nribs,25,sternum,116\n"
        "skeleton,1,humerus_left,69\nskeleton,9,hip_left,77\nskeleton,7,femur_right,76\n"
        "vertebrae,26,vertebrae_C1,50\nribs,1,rib_left_1,92\nskeleton,3,scapula_left,71\n"
    )
    structures = read_structures_table(table)
    assert structures[118] == "costal_cartilages"
    assert bone_label_values(structures) == [50, 69, 71, 76, 77, 92, 116]
    labels = np.array([1, 118, 116, 0, 92], dtype=np.uint8).reshape(5, 1, 1)
    np.testing.assert_array_equal(bone_mask_from_labels(labels, table)[:, 0, 0], [False, False, True, False, True])
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected an id column"):
        read_structures_table(bad)
    with pytest.raises(ValueError, match="integer label"):
        bone_mask_from_labels(np.full((2, 2, 2), 0.5), structures)
