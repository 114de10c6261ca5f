"""A 3DPN export applied to real radiographs: the same network input as training for the same image, whatever
its display transform; frozen; clear errors for files that are not 3DPN exports."""

from __future__ import annotations

import pytest
import torch

from xraysyn.data.phantom import make_chest_phantom
from xraysyn.physics import ct2xray
from xraysyn.train.export import ExportError, export_run
from xraysyn.train.prior import train_prior
from xraysyn.train.prior_config import preset_config
from xraysyn.train.prior_model import load_prior
from xraysyn.train.stage1 import network_input_from_radiograph, simulated_network_input


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prior")
    config = preset_config("small").replace(loop__steps=1, loop__validate_every=1)
    train_prior(config, folder / "run", progress=False)
    path, _ = export_run(folder / "run", folder / "prior.pt")
    return path


def test_a_real_radiograph_gets_the_training_input_whatever_its_display(prior_file):
    prior = load_prior(prior_file)
    size = prior.volume_size
    phantom = make_chest_phantom((size,) * 3, seed=5)  # the canonical 384 mm cube, as the prior predicts
    ct = torch.from_numpy(phantom.hu)[None, None]
    bone = torch.from_numpy(phantom.bone_mask)[None, None].float()
    affine = torch.from_numpy(phantom.world_from_voxel).float()
    torch.testing.assert_close(affine, prior.world_from_voxel())
    truth = ct2xray(ct, bone, affine, prior.frontal_pose(), prior.geometry, num_samples=32)
    training_input = network_input_from_radiograph(simulated_network_input(truth.thickness, truth.i_atten),
                                                   affine, prior.frontal_pose(), prior.geometry, (size,) * 3)
    for display in (truth.image, truth.line_integral, truth.line_integral ** 0.6 * 7 + 3):
        torch.testing.assert_close(prior.network_input(display), training_input)
    hu, mask = prior.predict(truth.image)
    assert hu.shape == mask.shape == (1, 1, size, size, size)
    assert all(not p.requires_grad for p in prior.network.parameters()) and not prior.network.training


def test_larger_radiographs_are_area_averaged_to_the_detector(prior_file):
    prior = load_prior(prior_file)
    image = torch.rand(2, 1, 4 * prior.geometry.detector_shape[0], 4 * prior.geometry.detector_shape[1])
    assert prior.network_input(image).shape == (2, 1) + (prior.volume_size,) * 3
    with pytest.raises(ValueError, match=r"\(N, 1, rows, cols\)"):
        prior.network_input(image[:, 0])


def test_files_that_are_not_3dpn_exports_are_refused(prior_file, tmp_path):
    export = torch.load(prior_file, weights_only=True)
    export["stage"] = "refine"
    torch.save(export, tmp_path / "refine.pt")
    with pytest.raises(ExportError, match="not a 3D PriorNet"):
        load_prior(tmp_path / "refine.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not a readable xraysyn model file"):
        load_prior(tmp_path / "junk.pt")
