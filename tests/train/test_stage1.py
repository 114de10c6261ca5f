"""Stage-1 losses (paper eq. 9-10) against hand computations, and the stage-1 step on CPU."""

import math

import pytest
import torch

from xraysyn.data.phantom import make_chest_phantom, phantom_affine
from xraysyn.models import PriorNet3D
from xraysyn.physics import drr
from xraysyn.train import (
    Stage1Config,
    Stage1LossWeights,
    ct_loss,
    make_optimizer,
    mask_loss,
    network_input_from_backprojection,
    sample_view_angles,
    stage1_generator_loss,
    stage1_step,
    xray_view_loss,
)

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


def test_generator_loss_applies_weights():
    weights = Stage1LossWeights(ct=2.0, mask=3.0, xray=0.5)
    total = stage1_generator_loss(weights, ct=torch.tensor(1.0), mask=torch.tensor(10.0),
                                  xray_t=torch.tensor(4.0), xray_t_prime=torch.tensor(6.0))
    assert float(total) == pytest.approx(2.0 + 30.0 + 0.5 * 10.0)


def test_loss_input_errors():
    with pytest.raises(ValueError, match="shape"):
        ct_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="xray"):
        Stage1LossWeights(xray=-1.0)


# ----------------------------------------------------------------------------- config, views, BP scale
def test_config_geometry_covers_field_of_view():
    config = Stage1Config(detector_pixels=128, field_of_view_mm=256.0)
    geometry = config.geometry()
    assert geometry.detector_shape == (128, 128)
    # detector width / magnification = field of view at the isocenter plane
    width_mm = 128 * geometry.pixel_spacing[1]
    assert width_mm * geometry.sid / geometry.sdd == pytest.approx(256.0)
    assert (geometry.sdd, geometry.sid) == (1200.0, 1000.0)
    assert config.adam_betas == (0.5, 0.9) and config.learning_rate == 1e-4 and config.max_angle_deg == 18.0


@pytest.mark.parametrize("kwargs, word", [({"projector_backend": "numba"}, "projector_backend"),
                                          ({"num_samples": 8, "step_mm": 1.0}, "at most one"),
                                          ({"model_preset": "big"}, "preset"),
                                          ({"max_angle_deg": 95.0}, "max_angle_deg")])
def test_config_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Stage1Config(**kwargs)


def test_view_angles_uniform_in_range_and_poses_volume_major():
    geometry = Stage1Config().geometry()
    views = sample_view_angles(500, geometry, 18.0, generator=torch.Generator().manual_seed(3))
    for angles in (views.azimuth_deg, views.elevation_deg):
        assert angles.shape == (500, 2)
        assert float(angles.abs().max()) <= 18.0
        # uniform on [−18, 18]: mean 0, standard deviation 36 / √12 ≈ 10.39 (1000 samples)
        assert abs(float(angles.mean())) < 1.5
        assert float(angles.std()) == pytest.approx(36.0 / math.sqrt(12.0), rel=0.08)
    assert views.poses.shape == (1000, 4, 4)
    torch.testing.assert_close(views.input_poses, geometry.poses(views.azimuth_deg[:, 0], views.elevation_deg[:, 0]))
    again = sample_view_angles(500, geometry, 18.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.poses, views.poses)


def test_backprojected_water_is_one():
    # A water cube: each line integral is μ_water · chord, BP divides by the chord, the scale by μ_water.
    config = Stage1Config(detector_pixels=32, field_of_view_mm=160.0)
    geometry = config.geometry()
    affine = torch.from_numpy(phantom_affine((SIZE,) * 3, (10.0,) * 3)).float()
    views = sample_view_angles(1, geometry, 18.0, generator=torch.Generator().manual_seed(1))
    line_integral = drr(torch.zeros(1, 1, SIZE, SIZE, SIZE), affine, views.input_poses, geometry, step_mm=0.5)
    volume = network_input_from_backprojection(line_integral, affine, views.input_poses, geometry, (SIZE,) * 3)
    interior = volume[0, 0, 4:-4, 4:-4, 4:-4]
    torch.testing.assert_close(interior, torch.ones_like(interior), atol=0.01, rtol=0)


# ----------------------------------------------------------------------------- the step
@pytest.fixture(scope="module")
def batch():
    phantom = make_chest_phantom((SIZE,) * 3, seed=0)
    ct = torch.from_numpy(phantom.hu)[None, None].float()
    mask = torch.from_numpy(phantom.bone_mask)[None, None].float()
    return ct, mask, torch.from_numpy(phantom.world_from_voxel).float()


def _setup(**weights):
    torch.manual_seed(0)
    config = Stage1Config(model_preset="small", detector_pixels=DETECTOR, num_samples=SAMPLES,
                          loss_weights=Stage1LossWeights(**weights))
    model = PriorNet3D(config.model_config())
    return config, model, make_optimizer(model, config)


def test_step_returns_finite_losses_and_changes_parameters(batch):
    config, model, optimizer = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    losses = stage1_step(model, optimizer, *batch, config, torch.Generator().manual_seed(0))
    assert set(losses) == {"total", "ct", "mask", "xray_t", "xray_t_prime"}
    assert all(math.isfinite(v) and v > 0 for v in losses.values())
    w = config.loss_weights
    assert losses["total"] == pytest.approx(w.ct * losses["ct"] + w.mask * losses["mask"]
                                            + w.xray * (losses["xray_t"] + losses["xray_t_prime"]), rel=1e-5)
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert all(changed)


def test_loss_decreases_when_overfitting_one_example(batch):
    config, model, optimizer = _setup()
    totals = [stage1_step(model, optimizer, *batch, config, torch.Generator().manual_seed(0))["total"]
              for _ in range(15)]
    assert totals[-1] < 0.8 * totals[0], totals


def test_xray_terms_alone_reach_the_first_conv_through_the_projector(batch):
    config, model, optimizer = _setup(ct=0.0, mask=0.0, xray=1.0)
    stage1_step(model, optimizer, *batch, config, torch.Generator().manual_seed(0))
    first = model.encoder[0].conv.weight.grad
    assert first is not None and float(first.abs().sum()) > 0
    # control: with every weight zero nothing reaches the network (the check above can fail)
    config, model, optimizer = _setup(ct=0.0, mask=0.0, xray=0.0)
    stage1_step(model, optimizer, *batch, config, torch.Generator().manual_seed(0))
    assert float(model.encoder[0].conv.weight.grad.abs().sum()) == 0.0


def test_step_input_errors(batch):
    config, model, optimizer = _setup()
    ct, mask, affine = batch
    with pytest.raises(ValueError, match="bone_mask"):
        stage1_step(model, optimizer, ct, mask[..., :8], affine, config)
    with pytest.raises(ValueError, match="multiples of 8"):
        stage1_step(model, optimizer, ct[..., :12], mask[..., :12], affine, config)
