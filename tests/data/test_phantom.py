"""Properties of the procedural chest phantom, checked against anatomy and the RAS+ affine."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xraysyn.data.phantom import BONE_LABELS, HU_RANGES, LABELS, make_chest_phantom

SHAPE = (32, 32, 32)


@pytest.fixture(scope="module")
def phantom():
    return make_chest_phantom(SHAPE, seed=7, noise_hu=0.0)


def _world_centroid(ph, names) -> np.ndarray:
    mask = np.isin(ph.labels, [LABELS[n] for n in names])
    ijk = np.argwhere(mask).mean(axis=0)
    return (ph.world_from_voxel @ np.append(ijk, 1.0))[:3]


def test_same_seed_same_arrays_and_seeds_differ():
    a = make_chest_phantom(SHAPE, seed=3)
    b = make_chest_phantom(SHAPE, seed=3)
    c = make_chest_phantom(SHAPE, seed=4)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (a.labels != c.labels).mean() > 0.01
    assert np.abs(a.hu - c.hu).mean() > 10.0


def test_types_shapes_and_affine(phantom):
    assert phantom.hu.shape == SHAPE and phantom.hu.dtype == np.float32
    assert phantom.bone_mask.dtype == bool and phantom.labels.shape == SHAPE
    # Default: 384 mm field of view, grid centred on the world origin.
    np.testing.assert_allclose(phantom.spacing_mm, (12.0, 12.0, 12.0))
    centre = phantom.world_from_voxel @ np.array([15.5, 15.5, 15.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)
    bone_ids = [LABELS[n] for n in BONE_LABELS]
    np.testing.assert_array_equal(phantom.bone_mask, np.isin(phantom.labels, bone_ids))


def test_every_named_structure_present_at_128_is_present_here(phantom):
    # All structures except tiny ones must appear even on the coarse 32^3 grid.
    for name in ("fat", "muscle", "lung_left", "lung_right", "heart", "liver", "vertebrae", "ribs",
                 "sternum", "scapulae", "clavicles", "mediastinum"):
        assert (phantom.labels == LABELS[name]).any(), name


def test_labels_inside_body(phantom):
    body = phantom.labels != LABELS["air"]
    # Organs and bones (everything but the outer fat/muscle layers) never touch outside air
    # within the slab; the axial ends are cut like a real CT and excluded.
    organs = ~np.isin(phantom.labels, [LABELS["air"], LABELS["fat"], LABELS["muscle"]])
    interior = ndimage.binary_erosion(body, structure=np.ones((3, 3, 1), bool))
    assert not (organs[:, :, 1:-1] & ~interior[:, :, 1:-1]).any()
    # Outside the body is air at -1000 HU (no noise in this fixture).
    np.testing.assert_allclose(phantom.hu[~body], -1000.0)


def test_bone_hu_within_literature_ranges():
    ph = make_chest_phantom((48, 48, 48), seed=2, noise_hu=0.0)
    bone_hu = ph.hu[ph.bone_mask]
    lo = HU_RANGES["cancellous_bone"][0]
    hi = HU_RANGES["cortical_bone"][1]
    assert bone_hu.min() >= lo and bone_hu.max() <= hi
    # A cortical shell exists (>= 700 HU, the low end of cortical bone in CT texts).
    assert (bone_hu >= 700).mean() > 0.3
    # No soft tissue reaches bone densities.
    assert ph.hu[~ph.bone_mask].max() < HU_RANGES["cortical_bone"][0]
    lung = np.isin(ph.labels, [LABELS["lung_left"], LABELS["lung_right"]])
    assert -900 < np.median(ph.hu[lung]) < -700


def test_ras_anatomy(phantom):
    heart = _world_centroid(phantom, ["heart"])
    spine = _world_centroid(phantom, ["vertebrae"])
    sternum = _world_centroid(phantom, ["sternum"])
    right_lung = _world_centroid(phantom, ["lung_right"])
    left_lung = _world_centroid(phantom, ["lung_left"])
    liver = _world_centroid(phantom, ["liver"])
    assert spine[1] < heart[1] < sternum[1] + 30  # spine posterior (RAS: -y)
    assert spine[1] < sternum[1]
    assert right_lung[0] > 20 and left_lung[0] < -20  # right lung at +x
    assert heart[0] < 0  # heart leans to the patient's left
    assert liver[0] > 0 and liver[2] < right_lung[2]  # liver on the right, below the lungs
    n_right = (phantom.labels == LABELS["lung_right"]).sum()
    n_left = (phantom.labels == LABELS["lung_left"]).sum()
    assert 0.6 < n_right / n_left < 1.7


@pytest.mark.parametrize("seed", [0, 11])
def test_ribs_left_right_roughly_symmetric(seed):
    ph = make_chest_phantom((40, 40, 40), seed=seed, variation=1.0, noise_hu=0.0)
    ribs = np.argwhere(ph.labels == LABELS["ribs"])
    x = (ph.world_from_voxel @ np.c_[ribs, np.ones(len(ribs))].T)[0]
    right, left = (x > 0).sum(), (x < 0).sum()
    assert right > 50 and left > 50
    assert 0.7 < right / left < 1.4


def test_variation_zero_is_still_valid_and_seed_only_changes_noise():
    a = make_chest_phantom(SHAPE, seed=1, variation=0.0)
    b = make_chest_phantom(SHAPE, seed=2, variation=0.0)
    # Vessel trees still depend on the seed, bones and body outline do not.
    np.testing.assert_array_equal(a.bone_mask, b.bone_mask)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"shape": (4, 32, 32)}, "shape"),
        ({"shape": (32, 32)}, "shape"),
        ({"spacing_mm": -1.0}, "spacing_mm"),
        ({"spacing_mm": (1.0, float("nan"), 1.0)}, "spacing_mm"),
        ({"seed": -3}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"variation": 5.0}, "variation"),
        ({"noise_hu": -1.0}, "noise_hu"),
    ],
)
def test_bad_arguments(kwargs, needle):
    args = {"shape": SHAPE, **kwargs}
    with pytest.raises(ValueError, match=needle):
        make_chest_phantom(**args)


def test_cli_writes_ct_and_mask_atomically(tmp_path):
    nib = pytest.importorskip("nibabel")
    from typer.testing import CliRunner

    from xraysyn.cli import app

    out = tmp_path / "chest.nii.gz"
    result = CliRunner().invoke(app, ["phantom", str(out), "--seed", "5", "--size", "24", "--labels"])
    assert result.exit_code == 0, result.output
    ct = nib.load(out)
    mask = nib.load(tmp_path / "chest_mask.nii.gz")
    expected = make_chest_phantom((24, 24, 24), seed=5)
    np.testing.assert_allclose(ct.get_fdata(), expected.hu, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), expected.bone_mask.astype(np.uint8))
    np.testing.assert_allclose(ct.affine, expected.world_from_voxel)
    assert (tmp_path / "chest_labels.nii.gz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chest.nii.gz", "chest_labels.nii.gz", "chest_mask.nii.gz"]


def test_cli_rejects_bad_output_name(tmp_path):
    from typer.testing import CliRunner

    from xraysyn.cli import app

    result = CliRunner().invoke(app, ["phantom", str(tmp_path / "chest.png"), "--size", "16"])
    assert result.exit_code == 2
    assert "nii" in result.output
    assert list(tmp_path.iterdir()) == []


def test_pa_projection_shows_heart_on_the_image_right_and_liver_on_the_left(phantom):
    """Through the projector's PA view (column 0 = patient's right), anatomy lands where a reader expects."""
    torch = pytest.importorskip("torch")
    projector = pytest.importorskip("xraysyn.projector")
    from xraysyn.geometry import ConeBeamGeometry

    geometry = ConeBeamGeometry(detector_shape=(40, 40), pixel_spacing=(12.0, 12.0))
    poses = geometry.poses([0.0], [0.0])
    affine = torch.from_numpy(phantom.world_from_voxel).float()

    def centroid(names):
        mask = np.isin(phantom.labels, [LABELS[n] for n in names]).astype(np.float32)
        image = projector.forward_project(torch.from_numpy(mask)[None, None], affine, poses, geometry)[0, 0]
        rows, cols = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
        return float((image * rows).sum() / image.sum()), float((image * cols).sum() / image.sum())

    spine_row, spine_col = centroid(["vertebrae"])
    heart_row, heart_col = centroid(["heart"])
    liver_row, liver_col = centroid(["liver"])
    lung_row, _ = centroid(["lung_left", "lung_right"])
    assert heart_col > spine_col + 0.5  # patient's left is on the image right in a PA view
    assert liver_col < spine_col - 0.5
    assert liver_row > lung_row  # row 0 is superior
