"""The ablation baselines (issue 26): DRR mode of stage 1 against the DRR itself, the 2D Refiner's input against
FP(BP(I)) = I and its RDN by a hand parameter count, X2CT's frontal orientation against the projector, a few
training steps of each baseline whose loss falls, exact resume, exports, forced settings, and the CLI's errors."""

from __future__ import annotations

import csv
import math
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from xraysyn.data.phantom import make_chest_phantom
from xraysyn.models.normalization import HUScale
from xraysyn.models.rdn import RDN
from xraysyn.physics import ct2xray, drr
from xraysyn.projector import forward_project
from xraysyn.train.baselines import (
    Refiner2DTask,
    baseline_config_from_mapping,
    load_baseline_config,
    load_baseline_export,
    refiner2d_network_config,
    saved_baseline_config,
    simulated_baseline_preset,
    train_baseline,
    voxel_order_from_frontal_view,
)
from xraysyn.train.checkpoint import load_checkpoint, step_checkpoints
from xraysyn.train.config_io import ConfigError
from xraysyn.train.distributed import ProcessGroup
from xraysyn.train.export import export_run, load_export
from xraysyn.train.loop import TrainingInterrupted
from xraysyn.train.losses import Stage1LossWeights
from xraysyn.train.prior import train_prior
from xraysyn.train.prior_config import DataSource, SimulationConfig, preset_config
from xraysyn.train.sources import make_split, open_sources
from xraysyn.train.stage1 import simulate_views, stage1_losses, view_poses

SIDE = 16  # the small presets' volume and detector edge
IMAGE_SIZE = 32  # the small 2DRN's radiograph edge


def _loop(steps, **changes):
    base = dict(loop__steps=steps, loop__log_every=1, loop__validate_every=steps, loop__sample_every=1000,
                loop__checkpoint_every=3)
    base.update(changes)
    return base


def _losses(run, column="loss_total"):
    with open(run / "metrics.csv", newline="") as handle:
        return [float(r[column]) for r in csv.DictReader(handle) if r[column]]


def _phantom_batch(count=2, seed=0):
    cases = [make_chest_phantom((SIDE,) * 3, seed=seed + i) for i in range(count)]
    return {"ct_hu": torch.stack([torch.from_numpy(c.hu)[None] for c in cases]).float(),
            "bone": torch.stack([torch.from_numpy(c.bone_mask)[None] for c in cases]).float(),
            "world_from_voxel": torch.stack([torch.from_numpy(c.world_from_voxel) for c in cases]).float(),
            "azimuth_deg": torch.tensor([[0.0, 9.0], [3.0, -6.0]][:count]),
            "elevation_deg": torch.tensor([[0.0, 2.0], [-1.0, 4.0]][:count])}


# ------------------------------------------------------------------------------------------ DRR mode (prior_drr)
def test_drr_mode_views_are_the_drr_its_transmission_and_eq5_display():
    batch = _phantom_batch(1)
    geometry = SimulationConfig(detector_pixels=SIDE).geometry()
    poses = view_poses(batch["azimuth_deg"], batch["elevation_deg"], geometry)
    views = simulate_views(batch["ct_hu"], batch["bone"], batch["world_from_voxel"], poses, geometry, mode="drr",
                           num_samples=32)
    line = drr(batch["ct_hu"].double(), batch["world_from_voxel"].double(), poses.double(), geometry, num_samples=32)
    transmission = torch.exp(-line)
    assert torch.allclose(views.line_integral.double(), line, atol=1e-5)
    assert torch.allclose(views.i_atten.double(), transmission, atol=1e-6)
    peak = transmission.amax(dim=(2, 3), keepdim=True)
    assert torch.allclose(views.image.double(), peak - transmission, atol=1e-6)
    assert views.thickness.shape == (2, 0, SIDE, SIDE) and views.materials == ()


class _Constant(torch.nn.Module):
    """A 'network' whose output is a fixed (B, 2, D, H, W) tanh-space volume (plus 0 × input for the graph)."""

    def __init__(self, output):
        super().__init__()
        self.output = torch.nn.Parameter(output)

    def forward(self, x):
        return self.output + 0 * x.sum()


def test_drr_mode_loss_is_the_image_term_of_eq10_alone():
    batch = _phantom_batch(2)
    geometry = SimulationConfig(detector_pixels=SIDE).geometry()
    scale = HUScale()
    generator = torch.Generator().manual_seed(3)
    output = torch.rand(2, 2, SIDE, SIDE, SIDE, generator=generator) * 1.6 - 0.8
    weights = Stage1LossWeights(ct=0.0, mask=0.0, mask_dice=0.0, xray=1.0)
    network = _Constant(output)
    total, terms = stage1_losses(network, batch, geometry, loss_weights=weights, hu_scale=scale,
                                 mode="drr", num_samples=32)
    poses = view_poses(batch["azimuth_deg"], batch["elevation_deg"], geometry).double()
    affine = batch["world_from_voxel"].double()

    def display(hu):  # eq. 5 with the monochromatic transmission exp(−DRR), float64
        transmission = torch.exp(-drr(hu, affine, poses, geometry, num_samples=32))
        return transmission.amax(dim=(2, 3), keepdim=True) - transmission

    truth = display(batch["ct_hu"].double())
    predicted = display(scale.to_hu(output[:, :1].double()))
    expected_t = (predicted[0::2] - truth[0::2]).abs().mean()
    expected_t_prime = (predicted[1::2] - truth[1::2]).abs().mean()
    assert float(terms["xray_t"]) == pytest.approx(float(expected_t), rel=1e-4)
    assert float(terms["xray_t_prime"]) == pytest.approx(float(expected_t_prime), rel=1e-4)
    assert float(total.detach()) == pytest.approx(float(expected_t + expected_t_prime), rel=1e-4)
    total.backward()  # gradients reach the network through the DRR
    assert float(network.output.grad.abs().sum()) > 0


def test_simulation_mode_is_checked():
    with pytest.raises(ConfigError, match="simulation.mode"):
        SimulationConfig(mode="deepdrr")


def test_prior_drr_trains_its_loss_falls_and_exports_a_drr_3dpn(tmp_path):
    config = load_baseline_config("prior_drr", "small").replace(data__augment=False, **_loop(12))
    assert config.simulation.mode == "drr"
    run = tmp_path / "run"
    train_baseline("prior_drr", preset_config("small").replace(data__augment=False, **_loop(12)), run,
                   progress=False)  # the mode is forced even from a CT2Xray config
    losses = _losses(run)
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    export = load_export(export_run(run, tmp_path / "drr.pt", checkpoint="last")[0])
    assert export["stage"] == "prior" and export["model_class"] == "PriorNet3D"
    assert export["config"]["simulation"]["mode"] == "drr"


# ------------------------------------------------------------------------------------------ refiner2d
def _rdn_hand_count(cfg) -> int:
    g0, g, c, d, r = cfg.features, cfg.growth, cfg.layers_per_block, cfg.blocks, cfg.upscale
    count = 9 * cfg.in_channels * g0 + g0 + 9 * g0 * g0 + g0  # shallow features
    block = sum(9 * (g0 + k * g) * g + g for k in range(c)) + (g0 + c * g) * g0 + g0
    count += d * block + d * g0 * g0 + g0 + 9 * g0 * g0 + g0  # blocks, global fusion 1×1 and 3×3
    return count + 9 * g0 * g * r * r + g * r * r + 9 * g * cfg.out_channels + cfg.out_channels  # upsampler


def test_refiner2d_network_is_the_papers_rdn_with_twenty_blocks():
    paper = refiner2d_network_config("paper")
    assert (paper.blocks, paper.layers_per_block, paper.growth, paper.features) == (20, 8, 64, 64)
    assert (paper.in_channels, paper.out_channels, paper.upscale, paper.per_sample_fusion) == (2, 1, 1, False)
    assert _rdn_hand_count(paper) == 27_485_441
    with torch.device("meta"):
        model = RDN(paper)
        assert sum(p.numel() for p in model.parameters()) == 27_485_441
        assert model(torch.empty(2, 2, 128, 128)).shape == (2, 1, 128, 128)
    for name, side in (("cpu64", 64), ("small", 16)):
        cfg = refiner2d_network_config(name)
        model = RDN(cfg)
        assert sum(p.numel() for p in model.parameters()) == _rdn_hand_count(cfg)
        assert model(torch.rand(3, 2, side, side)).shape == (3, 1, side, side)
    with pytest.raises(ValueError, match="fusion_weights must be None"):
        RDN(refiner2d_network_config("small"))(torch.rand(1, 2, 16, 16), torch.zeros(1, 8, 8))


def _task(baseline, **changes):
    config = simulated_baseline_preset(baseline, "small").replace(data__augment=False, **changes)
    datasets = open_sources(config.data, config.loop.seed)
    return Refiner2DTask(config, ProcessGroup(), datasets, make_split(config.data, datasets, config.loop.seed))


def test_refiner_input_reprojects_the_input_at_its_own_view():
    """FP(BP(I, T), T) = I (eq. 7) on the rays well inside the volume (a 16³ grid blurs the rays that graze its
    edge); the second channel is I itself."""
    task = _task("refiner2d", simulation__num_samples=64)
    batch = _phantom_batch(2)
    poses = view_poses(batch["azimuth_deg"], batch["elevation_deg"], task.geometry)
    phase = 2 * math.pi * torch.arange(SIDE) / SIDE
    image = (0.5 + 0.3 * torch.sin(phase)[:, None] * torch.cos(phase)[None, :]).expand(2, 1, SIDE, SIDE).contiguous()
    stacked = task.refiner_input(image, batch["world_from_voxel"], poses[0::2], poses[0::2], (SIDE,) * 3)
    assert stacked.shape == (2, 2, SIDE, SIDE)
    assert torch.equal(stacked[:, 1:], image)
    chord = forward_project(torch.ones(2, 1, SIDE, SIDE, SIDE), batch["world_from_voxel"], poses[0::2],
                            task.geometry, num_samples=64)
    inside = chord > 0.8 * chord.amax()
    assert int(inside.sum()) > SIDE * SIDE  # most of both images
    error = (stacked[:, :1] - image).abs()[inside]
    assert float(error.mean()) < 0.02 and float(error.max()) < 0.1


def test_refiner2d_trains_its_loss_falls_resumes_exactly_and_exports(tmp_path):
    config = simulated_baseline_preset("refiner2d", "small").replace(data__augment=False, **_loop(12))
    run = tmp_path / "run"
    summary = train_baseline("refiner2d", config, run, progress=False)
    losses = _losses(run)
    assert sum(losses[-3:]) < 0.6 * sum(losses[:3]), losses
    assert set(summary.validation) == {"psnr_t", "ssim_t", "psnr_t_prime", "ssim_t_prime"}
    path, digest = export_run(run, tmp_path / "refiner.pt", checkpoint="last")
    network, export = load_baseline_export(path)
    assert export["stage"] == "refiner2d" and export["model_class"] == "RDN" and export["sha256"] == digest
    weights = load_checkpoint(step_checkpoints(run)[-1])["modules"]["refiner2d"]
    assert all(torch.equal(weights[k], v) for k, v in network.state_dict().items())


def test_interrupted_and_resumed_refiner2d_equals_an_uninterrupted_run(tmp_path):
    config = simulated_baseline_preset("refiner2d", "small").replace(data__augment=False, **_loop(5))
    train_baseline("refiner2d", config, tmp_path / "whole", progress=False)

    def stop_at_two(step, losses):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        train_baseline("refiner2d", config, tmp_path / "split", progress=False, on_step=stop_at_two)
    train_baseline("refiner2d", saved_baseline_config("refiner2d", tmp_path / "split"), tmp_path / "split",
                   resume=True, progress=False)
    assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")


# ------------------------------------------------------------------------------------------ x2ct
def test_frontal_view_frame_maps_to_the_voxels_the_frontal_rays_cross():
    """A column along depth at (row, col) in X2CT's frame, put in voxel order, projects onto that pixel."""
    phantom = make_chest_phantom((SIDE,) * 3, seed=0)
    affine = torch.from_numpy(phantom.world_from_voxel).float()
    geometry = SimulationConfig(detector_pixels=SIDE).geometry()
    pose = view_poses(torch.zeros(1, 1), torch.zeros(1, 1), geometry)
    for row, col in ((3, 4), (12, 5), (8, 13)):
        view = torch.zeros(1, 1, SIDE, SIDE, SIDE)
        view[0, 0, :, row, col] = 1.0
        image = forward_project(voxel_order_from_frontal_view(view), affine, pose, geometry, num_samples=64)[0, 0]
        peak = divmod(int(image.argmax()), SIDE)
        assert abs(peak[0] - row) <= 1 and abs(peak[1] - col) <= 1, (row, col, peak)


def test_x2ct_trains_on_the_eq9_losses_its_loss_falls_and_exports(tmp_path):
    config = simulated_baseline_preset("x2ct", "small").replace(data__augment=False, **_loop(12))
    run = tmp_path / "run"
    summary = train_baseline("x2ct", config, run, progress=False)
    losses = _losses(run)
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    assert {"psnr_ct", "dice_bone", "psnr_t_prime"} <= set(summary.validation)
    for term in ("ct", "mask", "xray_t", "xray_t_prime"):
        assert len(_losses(run, f"loss_{term}")) == 12
    network, export = load_baseline_export(export_run(run, tmp_path / "x2ct.pt", checkpoint="last")[0])
    assert export["stage"] == "x2ct" and export["model_class"] == "FrontalX2CT"
    out = network(torch.rand(1, 1, SIDE, SIDE))
    assert out.shape == (1, 2, SIDE, SIDE, SIDE)


def test_x2ct_needs_a_detector_as_wide_as_the_volume():
    with pytest.raises(ConfigError, match="detector_pixels"):
        simulated_baseline_preset("x2ct", "small").replace(simulation__detector_pixels=32)


# ------------------------------------------------------------------------------------------ refine_nom
@pytest.fixture(scope="module")
def radiographs_and_prior(tmp_path_factory):
    """Six displayed phantom radiographs (PNG) and a 20-step small 3DPN export, as in test_refine_training."""
    root = tmp_path_factory.mktemp("nom")
    images = root / "radiographs"
    images.mkdir()
    geometry = SimulationConfig(detector_pixels=IMAGE_SIZE).geometry()
    for i in range(6):
        phantom = make_chest_phantom((IMAGE_SIZE,) * 3, seed=100 + i)
        result = ct2xray(torch.from_numpy(phantom.hu)[None, None], torch.from_numpy(phantom.bone_mask)[None, None].float(),
                         torch.from_numpy(phantom.world_from_voxel).float(), geometry.poses(torch.zeros(1)), geometry,
                         num_samples=48)
        line = result.line_integral[0, 0].numpy()
        display = ((line - line.min()) / (line.max() - line.min())) ** 0.8
        Image.fromarray((display * 255).astype(np.uint8)).save(images / f"r{i}.png")
    train_prior(preset_config("small").replace(loop__steps=20, data__augment=False), root / "prior_run", progress=False)
    prior, _ = export_run(root / "prior_run", root / "prior.pt", checkpoint="last")
    return images, prior


@pytest.mark.slow
def test_refine_nom_trains_without_m_its_loss_falls_and_exports(radiographs_and_prior, tmp_path):
    images, prior = radiographs_and_prior
    config = load_baseline_config("refine_nom", "small").replace(
        static_hyper=False, data__sources=(DataSource(str(images)),), **_loop(30))  # forced back on
    run = tmp_path / "run"
    train_baseline("refine_nom", config, run, prior=prior, progress=False)
    recon = _losses(run, "loss_recon")
    assert sum(recon[-5:]) < 0.95 * sum(recon[:5]), recon
    assert saved_baseline_config("refine_nom", run).static_hyper is True
    weights = load_checkpoint(step_checkpoints(run)[-1])["modules"]["refine"]
    assert not any(k.startswith("hypernet.") for k in weights)
    export = load_export(export_run(run, tmp_path / "nom.pt", checkpoint="last")[0])
    assert export["stage"] == "refine" and export["model_config"]["static_hyper"] is True


# ------------------------------------------------------------------------------------------ configs and CLI
def test_a_yaml_config_names_its_baseline(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("baseline: refiner2d\npreset: small\nloop:\n  steps: 7\n")
    with pytest.raises(ConfigError, match="not 'x2ct'"):
        load_baseline_config("x2ct", path)
    assert load_baseline_config("refiner2d", path).loop.steps == 7
    with pytest.raises(ConfigError, match="baseline must be one of"):
        baseline_config_from_mapping({"preset": "small"})


def test_prior_is_for_refine_nom_only(tmp_path):
    with pytest.raises(ConfigError, match="--prior is for refine_nom only"):
        train_baseline("x2ct", simulated_baseline_preset("x2ct", "small"), tmp_path / "run", prior=tmp_path / "p.pt")
    assert not (tmp_path / "run").exists()


def test_cli_unknown_baseline_is_one_line_exit_2_and_creates_nothing(tmp_path):
    from typer.testing import CliRunner

    from xraysyn.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "baseline", "refiner3d", "--config", "small", "--out", str(out)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown baseline 'refiner3d'" in lines[0] and "x2ct" in lines[0], result.output
    assert not out.exists()


def test_cli_trains_and_exports_a_baseline(tmp_path):
    from typer.testing import CliRunner

    from xraysyn.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "baseline", "x2ct", "--config", "small", "--data", "phantom",
                                      "--steps", "2", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert saved_baseline_config("x2ct", out).loop.steps == 2
    result = CliRunner().invoke(app, ["export", str(out), "--checkpoint", "last", "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 0, result.output
    assert load_export(tmp_path / "m.pt")["stage"] == "x2ct"
