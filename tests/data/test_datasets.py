"""Datasets on tiny generated data: CT shards, phantoms, folders of radiographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from xraysyn.data.augment import AugmentConfig
from xraysyn.data.datasets import (
    PAPER_MAX_ANGLE_DEG,
    CTShardDataset,
    PhantomDataset,
    RadiographFolderDataset,
    resample_cube,
)
from xraysyn.data.phantom import make_chest_phantom
from xraysyn.data.radiograph import RadiographReadError
from xraysyn.data.shards import write_shard

SIZE = 16


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    (root / "sub").mkdir()
    for seed, folder in ((1, root), (2, root / "sub")):
        ph = make_chest_phantom((SIZE, SIZE, SIZE), seed=seed)
        write_shard(folder / f"ct{seed}.npz", ph.hu, ph.bone_mask, ph.world_from_voxel, {"source": f"phantom {seed}"})
    return root


def test_shard_items_match_the_shards_and_angles_are_in_range(shard_root):
    ds = CTShardDataset(shard_root, seed=3)
    assert len(ds) == 2
    item = ds[0]
    expected = make_chest_phantom((SIZE, SIZE, SIZE), seed=1)
    assert item["ct_hu"].shape == (1, SIZE, SIZE, SIZE) and item["ct_hu"].dtype == torch.float32
    np.testing.assert_allclose(item["ct_hu"][0].numpy(), np.round(expected.hu), atol=0.5)  # int16 storage
    np.testing.assert_array_equal(item["bone"][0].numpy(), expected.bone_mask.astype(np.float32))
    np.testing.assert_allclose(item["world_from_voxel"].numpy(), expected.world_from_voxel, atol=1e-5)
    angles = torch.stack([ds[i][k] for i in range(2) for k in ("azimuth_deg", "elevation_deg")])
    assert angles.shape == (4, 2) and angles.abs().max() <= PAPER_MAX_ANGLE_DEG
    # Reproducible per (seed, epoch, index); a new epoch draws new angles.
    assert torch.equal(ds[1]["azimuth_deg"], CTShardDataset(shard_root, seed=3)[1]["azimuth_deg"])
    before = ds[1]["azimuth_deg"].clone()
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["azimuth_deg"], before)


def test_angles_are_roughly_uniform_in_the_paper_range(shard_root):
    ds = CTShardDataset(shard_root, seed=0)
    values = []
    for epoch in range(150):
        ds.set_epoch(epoch)
        values.append(torch.cat([ds[0]["azimuth_deg"], ds[0]["elevation_deg"]]))
    values = torch.cat(values).double()
    # Uniform(-18, 18): mean 0, standard deviation 36 / sqrt(12) = 10.39.
    assert abs(values.mean().item()) < 1.5
    assert abs(values.std().item() - 36 / 12**0.5) < 1.0


def test_augmented_items_keep_a_binary_mask(shard_root):
    ds = CTShardDataset(shard_root, augment=AugmentConfig(max_rotation_deg=8.0), seed=0)
    item = ds[0]
    assert set(torch.unique(item["bone"]).tolist()) <= {0.0, 1.0}
    plain = CTShardDataset(shard_root, seed=0)[0]
    assert not torch.equal(item["ct_hu"], plain["ct_hu"])
    assert torch.equal(ds[0]["ct_hu"], item["ct_hu"])


def test_resample_keeps_the_physical_extent_and_a_linear_ramp(shard_root):
    affine = torch.tensor([[2.0, 0, 0, -15.0], [0, 1.5, 0, 4.0], [0, 0, 3.0, 7.0], [0, 0, 0, 1]], dtype=torch.float64)
    i = torch.arange(SIZE, dtype=torch.float32)
    hu = (10.0 * i).reshape(1, SIZE, 1, 1).expand(1, SIZE, SIZE, SIZE).contiguous()
    bone = torch.zeros(1, SIZE, SIZE, SIZE)
    bone[:, : SIZE // 2] = 1
    new_hu, new_bone, new_affine = resample_cube(hu, bone, affine, 8)
    corner_old = affine @ torch.tensor([-0.5, -0.5, -0.5, 1.0], dtype=torch.float64)
    corner_new = new_affine @ torch.tensor([-0.5, -0.5, -0.5, 1.0], dtype=torch.float64)
    far_old = affine @ torch.tensor([SIZE - 0.5] * 3 + [1.0], dtype=torch.float64)
    far_new = new_affine @ torch.tensor([7.5] * 3 + [1.0], dtype=torch.float64)
    torch.testing.assert_close(corner_new, corner_old)
    torch.testing.assert_close(far_new, far_old)
    # A linear ramp resampled equals the ramp at the new voxel centres (old index = 10 * hu).
    centres_old_index = (torch.arange(8, dtype=torch.float64) + 0.5) * 2 - 0.5
    torch.testing.assert_close(new_hu[0, :, 3, 3].double(), 10.0 * centres_old_index)
    assert new_bone[0, :4].eq(1).all() and new_bone[0, 4:].eq(0).all()
    resized = CTShardDataset(shard_root, size=8)[0]
    assert resized["ct_hu"].shape == (1, 8, 8, 8)


def test_shard_dataset_errors(tmp_path):
    with pytest.raises(NotADirectoryError):
        CTShardDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no .npz shards"):
        CTShardDataset(tmp_path)
    with pytest.raises(ValueError, match="max_angle_deg"):
        PhantomDataset(1, size=16, max_angle_deg=-1)
    with pytest.raises(ValueError, match="augment"):
        PhantomDataset(1, size=16, augment="yes")


def test_phantom_dataset_items_and_batching():
    ds = PhantomDataset(3, size=SIZE, seed=5)
    item = ds[2]
    ph = make_chest_phantom((SIZE,) * 3, seed=ds.phantom_seed(2))
    np.testing.assert_array_equal(item["ct_hu"][0].numpy(), ph.hu)
    np.testing.assert_array_equal(item["bone"][0].numpy(), ph.bone_mask.astype(np.float32))
    assert ds.phantom_seed(0) != PhantomDataset(3, size=SIZE, seed=6).phantom_seed(0)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["ct_hu"].shape == (2, 1, SIZE, SIZE, SIZE)
    assert batch["world_from_voxel"].shape == (2, 4, 4) and batch["azimuth_deg"].shape == (2, 2)
    with pytest.raises(IndexError):
        ds[3]


def _png(path, value=None, shape=(40, 60)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros(shape, np.uint8)
    image[:, 10:50] = 180 if value is None else value
    Image.fromarray(image).save(path)


def test_radiograph_folder_tbx11k_layout(tmp_path):
    _png(tmp_path / "imgs" / "health" / "h1.png")
    _png(tmp_path / "imgs" / "health" / "more" / "h2.jpg")
    _png(tmp_path / "imgs" / "sick" / "s1.png")
    _png(tmp_path / "imgs" / ".cache" / "hidden.png")
    (tmp_path / "imgs" / "readme.txt").write_text("not an image")
    all_ds = RadiographFolderDataset(tmp_path, size=32)
    assert [p.name for p in all_ds.paths] == ["h1.png", "h2.jpg", "s1.png"]
    healthy = RadiographFolderDataset(tmp_path, size=32, classes=["health"])
    assert [p.name for p in healthy.paths] == ["h1.png", "h2.jpg"]
    item = healthy[0]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["original_shape"].tolist() == [40, 60]
    assert torch.isnan(item["pixel_spacing_mm"]).all()
    # Body crop: bright columns 10..49, side 40 * 1.1 clipped to the 40-pixel short side, centred on 29.5.
    assert item["crop"].tolist() == [0, 10, 40, 40]
    batch = next(iter(DataLoader(healthy, batch_size=2)))
    assert batch["image"].shape == (2, 1, 32, 32)


def test_radiograph_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no radiographs"):
        RadiographFolderDataset(tmp_path)
    _png(tmp_path / "a" / "x.png")
    with pytest.raises(ValueError, match="class folders"):
        RadiographFolderDataset(tmp_path, classes=["health"])
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = RadiographFolderDataset(tmp_path, size=16)
    with pytest.raises(RadiographReadError, match="broken.png"):
        ds[0]
