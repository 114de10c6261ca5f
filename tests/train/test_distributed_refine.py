"""DistributedDataParallel of stage 2 on the CPU (gloo): one step of two processes on half batches gives the
gradients of one process on the whole batch, for the discriminator D (its update comes first) and for F + M
(after D's update), and the same logged losses.

Why equality holds exactly (up to float64 rounding): every term of the step is a mean over equally sized
halves of per-item values — the LSGAN losses average over items and patches, the L1 terms over items and
pixels — and DDP averages the two processes' gradients; nothing couples the items of a batch (instance norm
in D and the display window are per image, F and M have no batch statistics, the 3DPN runs per item without
gradients). D is updated from the same averaged gradients in both runs, so F + M's gradients, taken through
the updated D, agree too."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from xraysyn.data.phantom import make_chest_phantom
from xraysyn.physics import ct2xray
from xraysyn.train.config_io import to_dict
from xraysyn.models.refine2d import RefineNetConfig
from xraysyn.train.prior_config import SimulationConfig
from xraysyn.train.refine_config import refine_preset

BATCH = 4  # two items per process
PRIOR_SEED = 7
RENDER_SAMPLES = 48  # projector samples per ray of the phantom renders (only the images' content)
#: float64 F + M and D: what remains is the order of the sums (DDP's average against one batch's mean).
RELATIVE_TOLERANCE = 1e-6
#: One process on the first half batch alone: its gradients are this far (relative) from the whole batch's in
#: at least one tensor of each module (measured: D 0.24, F + M 0.31), so the comparison has power.
HALF_BATCH_DIFFERENCE = 1e-2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _radiographs(folder, count: int) -> list:
    """``count`` displayed phantom radiographs (PNG) of the small presets' size, different per item."""
    size = RefineNetConfig.preset("small").hypernet.input_size  # the small 2DRN's radiograph edge
    geometry = SimulationConfig(detector_pixels=size).geometry()
    paths = []
    for i in range(count):
        phantom = make_chest_phantom((size,) * 3, seed=200 + i)
        result = ct2xray(torch.from_numpy(phantom.hu)[None, None],
                         torch.from_numpy(phantom.bone_mask)[None, None].float(),
                         torch.from_numpy(phantom.world_from_voxel).float(), geometry.poses(torch.zeros(1)), geometry,
                         num_samples=RENDER_SAMPLES)
        line = result.line_integral[0, 0].numpy()
        display = (line - line.min()) / (line.max() - line.min())
        path = folder / f"r{i}.png"
        Image.fromarray((display * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm()) / float(b.norm())


@pytest.mark.slow  # two spawned processes importing torch: 15-20 s on the loaded 2-core machine
def test_two_processes_on_half_batches_give_the_stage2_gradients_of_one_on_the_whole_batch(tmp_path):
    from support.ddp_worker import refine_one_step_gradients

    paths = _radiographs(tmp_path, BATCH)
    config = to_dict(refine_preset("small").replace(loop__batch_size=BATCH))
    one_path, two_path = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    refine_one_step_gradients(0, 1, 0, one_path, config, paths, PRIOR_SEED)
    mp.spawn(refine_one_step_gradients, args=(2, _free_port(), two_path, config, paths, PRIOR_SEED), nprocs=2,
             join=True)
    half_path = str(tmp_path / "half.pt")
    refine_one_step_gradients(0, 1, 0, half_path, {**config, "loop": {**config["loop"], "batch_size": BATCH // 2}},
                              paths, PRIOR_SEED)
    one = torch.load(one_path, weights_only=True)
    two = torch.load(two_path, weights_only=True)
    # the frozen 3DPN's thickness maps of each item: the same whichever process computes them
    whole = torch.load(f"{one_path}.rank0", weights_only=True)
    halves = [torch.load(f"{two_path}.rank{r}", weights_only=True) for r in range(2)]
    assert halves[0]["positions"] + halves[1]["positions"] == whole["positions"] == list(range(BATCH))
    split_thickness = torch.cat([h["thickness"] for h in halves])
    assert split_thickness.dtype == torch.float32 and split_thickness.shape == whole["thickness"].shape
    assert _relative(split_thickness.double(), whole["thickness"].double()) <= RELATIVE_TOLERANCE
    for module in ("discriminator", "refine"):
        grads_one, grads_two = one["grads"][module], two["grads"][module]
        assert grads_one.keys() == grads_two.keys() and grads_one, module
        for name, g in grads_one.items():
            assert g.dtype == torch.float64, (module, name)
            assert float(g.norm()) > 0, (module, name)
            relative = _relative(grads_two[name], g)
            assert relative <= RELATIVE_TOLERANCE, (module, name, relative)
    half = torch.load(half_path, weights_only=True)
    for module in ("discriminator", "refine"):
        differences = [_relative(half["grads"][module][n], g) for n, g in one["grads"][module].items()]
        assert max(differences) > HALF_BATCH_DIFFERENCE, (module, max(differences))
    assert one["losses"].keys() == two["losses"].keys()
    for name, value in one["losses"].items():
        assert two["losses"][name] == pytest.approx(value, rel=RELATIVE_TOLERANCE), name
