"""Stage-2 runs on simulated "real" radiographs (phantoms rendered with a display transform, CPU, tiny):
the reconstruction L1 falls, the 3DPN stays frozen, resume is exact, unreadable images are skipped and
counted, and bad inputs give one clear error before anything is written."""

from __future__ import annotations

import csv
import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from xraysyn.data.phantom import make_chest_phantom
from xraysyn.physics import ct2xray
from xraysyn.train.checkpoint import load_checkpoint, step_checkpoints
from xraysyn.train.config_io import ConfigError
from xraysyn.train.distributed import ProcessGroup
from xraysyn.train.export import export_run, load_export
from xraysyn.train.loop import TrainingInterrupted
from xraysyn.train.prior import train_prior
from xraysyn.train.prior_config import DataSource, SimulationConfig, preset_config
from xraysyn.train.prior_model import load_prior
from xraysyn.train.refine import RefineTask, train_refine
from xraysyn.train.refine_config import refine_preset

IMAGE_SIZE = 32  # the small 2DRN's radiograph edge


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    """A folder of 6 displayed phantom radiographs plus one undecodable file, and a 20-step small 3DPN."""
    root = tmp_path_factory.mktemp("stage2")
    images = root / "radiographs"
    images.mkdir()
    geometry = SimulationConfig(detector_pixels=IMAGE_SIZE).geometry()
    for i in range(6):
        phantom = make_chest_phantom((IMAGE_SIZE,) * 3, seed=100 + i)
        result = ct2xray(torch.from_numpy(phantom.hu)[None, None], torch.from_numpy(phantom.bone_mask)[None, None].float(),
                         torch.from_numpy(phantom.world_from_voxel).float(), geometry.poses(torch.zeros(1)), geometry,
                         num_samples=48)
        line = result.line_integral[0, 0].numpy()
        display = ((line - line.min()) / (line.max() - line.min())) ** 0.8  # a display gamma
        Image.fromarray((display * 255).astype(np.uint8)).save(images / f"r{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    train_prior(preset_config("small").replace(loop__steps=20, data__augment=False), root / "prior_run", progress=False)
    prior, _ = export_run(root / "prior_run", root / "prior.pt", checkpoint="last")
    return images, prior


def _config(images, steps, **changes):
    base = dict(data__sources=(DataSource(str(images)),), loop__steps=steps, loop__log_every=1,
                loop__validate_every=steps, loop__sample_every=1000, loop__checkpoint_every=3)
    base.update(changes)
    return refine_preset("small").replace(**base)


def _rows(run):
    with open(run / "metrics.csv", newline="") as handle:
        return [r for r in csv.DictReader(handle) if r["loss_total"]]


def test_thirty_steps_lower_the_reconstruction_l1_and_skip_the_unreadable_image(material, tmp_path):
    images, prior = material
    run = tmp_path / "run"
    train_refine(_config(images, 30), prior, run, progress=False)
    recon = [float(r["loss_recon"]) for r in _rows(run)]
    assert sum(recon[-5:]) < 0.95 * sum(recon[:5]), recon
    listing = json.loads((run / "radiographs.json").read_text())
    assert [s["path"].endswith("broken.png") for s in listing["skipped"]] == [True]
    assert len(listing["train"]) + len(listing["validation"]) == 6 and listing["validation"]
    assert (run / "curves.png").is_file() and (run / "checkpoints" / "best.pt").is_file()
    export = load_export(export_run(run, tmp_path / "refine.pt")[0])
    assert export["stage"] == "refine" and export["model_class"] == "RefineNet2D"


def test_the_prior_stays_frozen(material):
    images, prior_path = material
    config = _config(images, 3)
    prior = load_prior(prior_path)
    before = {k: v.clone() for k, v in prior.network.state_dict().items()}
    paths = sorted(p for p in images.iterdir() if p.name != "broken.png")
    task = RefineTask(config, ProcessGroup(), prior, paths[:4], paths[4:])
    items = task.items()
    for step in range(3):
        batch = task.collate([items[p] for p in range(2 * step, 2 * step + 2)])
        task.step([batch], step)
    assert all(not p.requires_grad and p.grad is None for p in prior.network.parameters())
    assert all(torch.equal(before[k], v) for k, v in prior.network.state_dict().items())
    assert any(p.grad is not None for p in task.refine.parameters())


def test_interrupted_and_resumed_stage2_equals_an_uninterrupted_run(material, tmp_path):
    images, prior = material
    config = _config(images, 6)
    train_refine(config, prior, tmp_path / "whole", progress=False)

    def stop_at_three(step, losses):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        train_refine(config, prior, tmp_path / "split", progress=False, on_step=stop_at_three)
    train_refine(config, None, tmp_path / "split", resume=True, progress=False)
    def losses(run):
        return [{k: v for k, v in r.items() if k.startswith("loss_")} for r in _rows(run)]

    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    whole = load_checkpoint(step_checkpoints(tmp_path / "whole")[-1])
    split = load_checkpoint(step_checkpoints(tmp_path / "split")[-1])
    for module in ("refine", "discriminator"):
        assert all(torch.equal(whole["modules"][module][k], v) for k, v in split["modules"][module].items())


@pytest.mark.parametrize("case", ["prior is a stage-2 export without a 3DPN", "prior is not a model", "no images",
                                  "no prior"])
def test_bad_inputs_give_one_error_and_create_nothing(material, tmp_path, case):
    images, prior = material
    config = _config(images, 2)
    if case == "prior is a stage-2 export without a 3DPN":
        train_refine(config, prior, tmp_path / "first", progress=False)
        export = torch.load(export_run(tmp_path / "first", tmp_path / "refine.pt")[0], weights_only=True)
        del export["prior_export"]  # as made before stage-2 exports embedded their 3DPN
        prior, match = tmp_path / "bare.pt", "not a 3D PriorNet"
        torch.save(export, prior)
    elif case == "prior is not a model":
        prior = tmp_path / "junk.pt"
        prior.write_bytes(b"junk")
        match = "not a readable xraysyn model file"
    elif case == "no images":
        (tmp_path / "empty").mkdir()
        config, match = _config(tmp_path / "empty", 2), "no radiographs"
    else:
        prior, match = None, "--prior is required"
    with pytest.raises(ConfigError, match=match):
        train_refine(config, prior, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_stage2_export_embeds_its_3dpn_and_serves_as_a_prior(material, tmp_path):
    """`xraysyn export` of a stage-2 run holds the 3DPN export it was trained behind (one file = the model);
    `load_prior` and `train refine --prior` read the 3DPN inside it."""
    from xraysyn.train.export import load_export
    from xraysyn.train.prior_model import load_prior

    images, prior = material
    train_refine(_config(images, 2), prior, tmp_path / "first", progress=False)
    path = export_run(tmp_path / "first", tmp_path / "refine.pt")[0]
    embedded = load_export(path)["prior_export"]
    assert embedded["sha256"] == load_export(prior)["sha256"]
    inner = load_prior(path).network.state_dict()
    assert all(torch.equal(inner[k], v.float()) for k, v in load_export(prior)["state_dict"].items())
    # A second stage-2 run trained behind that stage-2 export exports with the same 3DPN embedded.
    train_refine(_config(images, 2), path, tmp_path / "second", progress=False)
    again = load_export(export_run(tmp_path / "second", tmp_path / "refine2.pt")[0])
    assert again["stage"] == "refine" and again["prior_export"]["sha256"] == load_export(prior)["sha256"]
