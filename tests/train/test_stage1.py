"""Stage-1 losses (paper eq. 9-10) against hand computations, and the stage-1 computation on CPU."""

import math

import pytest
import torch

from xraysyn.data.input_domain import InputRandomisation, sample_input_perturbation
from xraysyn.data.phantom import make_chest_phantom, phantom_affine
from xraysyn.models import PriorNet3D, PriorNetConfig
from xraysyn.models.normalization import HUScale
from xraysyn.train import (
    Stage1LossWeights,
    ct_loss,
    mask_loss,
    soft_dice_loss,
    network_input_from_radiograph,
    stage1_generator_loss,
    stage1_losses,
    view_poses,
    xray_view_loss,
)
from xraysyn.train.prior_config import SimulationConfig
from xraysyn.train.stage1 import volume_edge_mm

SIZE = 16  # voxels per axis of the CPU test volumes
DETECTOR = 16  # detector pixels per side
SAMPLES = 16  # ray samples


# ----------------------------------------------------------------------------- losses
def test_ct_loss_is_mean_absolute_difference():
    pred = torch.tensor([[0.5, -0.5], [0.25, 0.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert float(ct_loss(pred, target)) == pytest.approx((0.5 + 0.5 + 0.25 + 1.0) / 4)


def test_mask_loss_is_binary_cross_entropy_written_out():
    p = torch.tensor([0.9, 0.2, 0.5, 0.01], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    by_hand = (-math.log(0.9) - math.log(0.8) - math.log(0.5) - math.log(0.01)) / 4
    assert float(mask_loss(p, y)) == pytest.approx(by_hand, rel=1e-12)
    # soft targets: −(y log p + (1 − y) log(1 − p))
    y_soft = torch.tensor([0.3], dtype=torch.float64)
    p_soft = torch.tensor([0.6], dtype=torch.float64)
    expected = -(0.3 * math.log(0.6) + 0.7 * math.log(0.4))
    assert float(mask_loss(p_soft, y_soft)) == pytest.approx(expected, rel=1e-12)
    # a saturated wrong prediction is large but finite (log floored at −100)
    assert float(mask_loss(torch.tensor([0.0]), torch.tensor([1.0]))) == pytest.approx(100.0)


def test_xray_view_loss_sums_image_and_per_material_means():
    image = torch.zeros(2, 1, 3, 4)
    target_image = image + 0.1
    thickness = torch.zeros(2, 2, 3, 4)
    target_thickness = thickness.clone()
    target_thickness[:, 0] = 1.0  # bone off by 1 g/cm² everywhere
    target_thickness[0, 1] = 4.0  # tissue off by 4 on half the views → mean 2
    loss = xray_view_loss(image, target_image, thickness, target_thickness)
    assert float(loss) == pytest.approx(0.1 + 1.0 + 2.0)


def test_soft_dice_loss_closed_forms():
    # item 0: 3 bone voxels, 2 predicted with p = 1 and one missed; item 1: no bone, p = 0.5 on 4 voxels
    y = torch.zeros(2, 1, 2, 4, dtype=torch.float64)
    p = torch.zeros_like(y)
    y[0, 0, 0, :3] = 1.0
    p[0, 0, 0, :2] = 1.0
    p[1, 0, 1, :] = 0.5
    item0 = 1 - (2 * 2 + 1) / (2 + 3 + 1)
    item1 = 1 - (0 + 1) / (2 + 0 + 1)
    assert float(soft_dice_loss(p, y)) == pytest.approx((item0 + item1) / 2, rel=1e-12)
    # a perfect binary prediction, with or without bone, scores 0; a disjoint one 1 − 1/(Σp + Σy + 1)
    assert float(soft_dice_loss(y, y)) == pytest.approx(0.0, abs=1e-15)
    disjoint = torch.zeros_like(y)
    disjoint[0, 0, 1, :] = 1.0
    assert float(soft_dice_loss(disjoint[:1], y[:1])) == pytest.approx(1 - 1 / (4 + 3 + 1), rel=1e-12)


def test_soft_dice_loss_gradient_against_finite_differences():
    generator = torch.Generator().manual_seed(0)
    p = torch.rand(2, 1, 3, 3, 3, dtype=torch.float64, generator=generator).requires_grad_()
    y = (torch.rand(2, 1, 3, 3, 3, dtype=torch.float64, generator=generator) > 0.7).double()
    assert torch.autograd.gradcheck(lambda q: soft_dice_loss(q, y), (p,))
    with pytest.raises(ValueError, match="batch axis"):
        soft_dice_loss(torch.ones(3), torch.ones(3))


def test_generator_loss_applies_weights():
    weights = Stage1LossWeights(ct=2.0, mask=3.0, mask_dice=7.0, xray=0.5)
    total = stage1_generator_loss(weights, ct=torch.tensor(1.0), mask=torch.tensor(10.0), mask_dice=torch.tensor(0.5),
                                  xray_t=torch.tensor(4.0), xray_t_prime=torch.tensor(6.0))
    assert float(total) == pytest.approx(2.0 + 30.0 + 3.5 + 0.5 * 10.0)


def test_loss_input_errors():
    with pytest.raises(ValueError, match="shape"):
        ct_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="xray"):
        Stage1LossWeights(xray=-1.0)


# ----------------------------------------------------------------------------- geometry, views, BP scale
def test_simulation_geometry_covers_field_of_view():
    geometry = SimulationConfig(detector_pixels=128, field_of_view_mm=256.0).geometry()
    assert geometry.detector_shape == (128, 128)
    # detector width / magnification = field of view at the isocenter plane
    width_mm = 128 * geometry.pixel_spacing[1]
    assert width_mm * geometry.sid / geometry.sdd == pytest.approx(256.0)
    assert (geometry.sdd, geometry.sid) == (1200.0, 1000.0)


def test_view_poses_are_volume_major():
    geometry = SimulationConfig().geometry()
    azimuth = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    elevation = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    poses = view_poses(azimuth, elevation, geometry)
    torch.testing.assert_close(poses, geometry.poses(torch.tensor([1.0, 2.0, 3.0, 4.0]),
                                                     torch.tensor([-1.0, -2.0, -3.0, -4.0])))


def test_volume_edge_is_the_mean_box_edge():
    affine = torch.from_numpy(phantom_affine((8, 10, 12), (1.0, 2.0, 3.0)))
    assert float(volume_edge_mm(affine, (8, 10, 12))[0]) == pytest.approx((8 + 20 + 36) / 3)


def test_backprojected_uniform_radiograph_is_one_across_the_box():
    # BP divides by the chord; the central ray crosses the whole cube (chord = edge), so V_BP there is 1
    geometry = SimulationConfig(detector_pixels=33, field_of_view_mm=400.0).geometry()
    affine = torch.from_numpy(phantom_affine((SIZE,) * 3, (10.0,) * 3)).float()
    pose = geometry.poses(torch.tensor([0.0]))
    volume = network_input_from_radiograph(torch.ones(1, 1, 33, 33), affine, pose, geometry, (SIZE,) * 3)
    # a nearly parallel beam (cone half-angle ~4.5°) crosses the cube along y: every chord ≈ the edge
    interior = volume[0, 0, 2:-2, :, 2:-2]
    torch.testing.assert_close(interior, torch.ones_like(interior), atol=0.02, rtol=0)


# ----------------------------------------------------------------------------- the losses of a batch
SIM = SimulationConfig(detector_pixels=DETECTOR, num_samples=SAMPLES)


@pytest.fixture(scope="module")
def batch():
    phantom = make_chest_phantom((SIZE,) * 3, seed=0)
    return {"ct_hu": torch.from_numpy(phantom.hu)[None, None].float(),
            "bone": torch.from_numpy(phantom.bone_mask)[None, None].float(),
            "world_from_voxel": torch.from_numpy(phantom.world_from_voxel)[None].float(),
            "azimuth_deg": torch.tensor([[0.0, 12.0]]), "elevation_deg": torch.tensor([[3.0, -5.0]])}


def _model():
    torch.manual_seed(0)
    return PriorNet3D(PriorNetConfig(widths=(8, 16, 32), norm="instance"))


def _losses(model, batch, weights=None, perturbations=None):
    return stage1_losses(model, batch, SIM.geometry(), loss_weights=weights or Stage1LossWeights(), hu_scale=HUScale(),
                         perturbations=perturbations, num_samples=SAMPLES)


def test_losses_are_finite_and_weighted(batch):
    total, terms = _losses(_model(), batch)
    assert set(terms) == {"ct", "mask", "mask_dice", "xray_t", "xray_t_prime"}
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in terms.values())
    w = Stage1LossWeights()
    assert float(total.detach()) == pytest.approx(w.ct * float(terms["ct"]) + w.mask * float(terms["mask"])
                                         + w.mask_dice * float(terms["mask_dice"])
                                         + w.xray * float(terms["xray_t"] + terms["xray_t_prime"]), rel=1e-5)


def test_loss_decreases_when_overfitting_one_example(batch):
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    totals = []
    for _ in range(15):
        optimizer.zero_grad()
        total, _ = _losses(model, batch)
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert totals[-1] < 0.8 * totals[0], totals


def test_xray_terms_alone_reach_the_first_conv_through_the_projector(batch):
    model = _model()
    total, _ = _losses(model, batch, Stage1LossWeights(ct=0.0, mask=0.0, mask_dice=0.0, xray=1.0))
    total.backward()
    first = model.encoder[0].conv.weight.grad
    assert first is not None and float(first.abs().sum()) > 0
    # control: with every weight zero nothing reaches the network (the check above can fail)
    model = _model()
    total, _ = _losses(model, batch, Stage1LossWeights(ct=0.0, mask=0.0, mask_dice=0.0, xray=0.0))
    total.backward()
    assert float(model.encoder[0].conv.weight.grad.abs().sum()) == 0.0


def test_perturbed_input_changes_the_loss_but_not_the_targets(batch):
    model = _model()
    clean, clean_terms = _losses(model, batch)
    perturbation = sample_input_perturbation(InputRandomisation(), torch.Generator().manual_seed(4))
    noisy, noisy_terms = _losses(model, batch, perturbations=[perturbation])
    assert float(noisy) != float(clean)
    with pytest.raises(ValueError, match="perturbations"):
        _losses(model, batch, perturbations=[perturbation, perturbation])


def test_losses_input_errors(batch):
    model = _model()
    bad = dict(batch, ct_hu=batch["ct_hu"][..., :12], bone=batch["bone"][..., :12])
    with pytest.raises(ValueError, match="multiples of 8"):
        _losses(model, bad)
