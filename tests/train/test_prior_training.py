"""Stage-1 training runs on tiny phantoms (CPU): learning, exact resume, interruption, corrupt checkpoints,
export, and one clear error for each bad input with the run folder untouched."""

from __future__ import annotations

import csv
import os
import signal
import warnings

import pytest
import torch

from xraysyn.train.checkpoint import CHECKPOINT_DIR, load_checkpoint, step_checkpoints
from xraysyn.train.config_io import ConfigError
from xraysyn.train.export import ExportError, export_run, load_export
from xraysyn.train.loop import TrainingInterrupted
from xraysyn.train.prior import train_prior
from xraysyn.train.prior_config import preset_config

LOSS_COLUMNS = ("loss_total", "loss_ct", "loss_mask", "loss_mask_dice", "loss_xray_t", "loss_xray_t_prime")


def _config(steps: int, **changes):
    base = dict(loop__steps=steps, loop__log_every=1, loop__validate_every=10, loop__sample_every=1000,
                loop__checkpoint_every=3, loop__keep_last=2)
    base.update(changes)
    return preset_config("small").replace(**base)


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _losses(run_dir):
    return {int(r["step"]): tuple(r[c] for c in LOSS_COLUMNS) for r in _rows(run_dir) if r["loss_total"]}


def _weights(run_dir):
    return load_checkpoint(step_checkpoints(run_dir)[-1])["modules"]["prior"]


def test_twenty_steps_lower_the_loss_and_raise_validation_psnr(tmp_path):
    run = tmp_path / "run"
    summary = train_prior(_config(20, loop__validate_every=20, data__augment=False), run, progress=False)
    assert summary.steps == 20
    rows = _rows(run)
    losses = [float(r["loss_total"]) for r in rows if r["loss_total"]]
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    validated = {int(r["step"]): float(r["val_psnr_t_prime"]) for r in rows if r["val_psnr_t_prime"]}
    assert set(validated) == {0, 20}
    assert validated[20] > validated[0] + 1.0, validated
    for name in ("config.yaml", "split.json", "curves.png", "checkpoints/best.pt", "samples/step_00000020.png"):
        assert (run / name).is_file(), name


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    config = _config(8, optim__schedule="cosine", optim__warmup_steps=2)
    train_prior(config, tmp_path / "whole", progress=False)

    def stop_at_four(step, losses):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # handled: the step finishes, a checkpoint is written

    with pytest.raises(TrainingInterrupted, match="after step 4"):
        train_prior(config, tmp_path / "split", progress=False, on_step=stop_at_four)
    assert [p.name for p in step_checkpoints(tmp_path / "split")] == ["step_00000003.pt", "step_00000004.pt"]
    # a killed process whose newer checkpoint write was interrupted: a truncated file and a temporary one
    folder = tmp_path / "split" / CHECKPOINT_DIR
    (folder / "step_00000006.pt").write_bytes((folder / "step_00000004.pt").read_bytes()[:100])
    (folder / ".step_00000007.pt.abc.tmp").write_bytes(b"partial")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_prior(config, tmp_path / "split", resume=True, progress=False)
    assert any("step_00000006.pt" in str(w.message) for w in caught)
    assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")
    whole, resumed = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not (folder / ".step_00000007.pt.abc.tmp").exists()


def test_resume_may_extend_the_steps_but_not_change_the_settings(tmp_path):
    run = tmp_path / "run"
    train_prior(_config(2), run, progress=False)
    with pytest.raises(ConfigError, match="settings differ"):
        train_prior(_config(4, loop__batch_size=4), run, resume=True, progress=False)
    summary = train_prior(_config(4), run, resume=True, progress=False)
    assert summary.steps == 4 and max(_losses(run)) == 4


def test_a_run_saved_before_the_dice_term_resumes_with_the_loss_it_was_trained_with(tmp_path):
    from xraysyn.train.config_io import read_yaml, write_yaml_text
    from xraysyn.train.prior_config import config_from_mapping, saved_run_mapping

    run = tmp_path / "run"
    train_prior(_config(2, loss__mask_dice=0.0), run, progress=False)
    mapping = read_yaml(run / "config.yaml")
    del mapping["loss"]["mask_dice"]  # as an earlier version wrote it
    (run / "config.yaml").write_text(write_yaml_text(mapping), encoding="utf-8")
    saved = config_from_mapping(saved_run_mapping(read_yaml(run / "config.yaml")))
    assert saved.loss.mask_dice == 0.0 and config_from_mapping(mapping).loss.mask_dice == 1.0
    summary = train_prior(saved.replace(loop__steps=4), run, resume=True, progress=False)
    assert summary.steps == 4
    with pytest.raises(ConfigError, match="settings differ"):  # the Dice term may not be switched on mid-run
        train_prior(_config(6), run, resume=True, progress=False)
    # a mapping that has the term, or no loss section at all, is left as it is
    assert saved_run_mapping({"loss": {"mask_dice": 0.5}}) == {"loss": {"mask_dice": 0.5}}
    assert saved_run_mapping({"preset": "small"}) == {"preset": "small"}


def test_export_is_weights_only_with_a_checked_digest(tmp_path):
    run = tmp_path / "run"
    train_prior(_config(3, loop__validate_every=3), run, progress=False)
    path, digest = export_run(run, tmp_path / "prior.pt")
    export = load_export(path)
    assert export["sha256"] == digest and export["stage"] == "prior" and export["steps"] == 3
    assert export["input_normalisation"]["detector_pixels"] == 16
    assert set(export["validation"]) >= {"psnr_t_prime", "ssim_t", "dice_bone"}
    from xraysyn.models import PriorNet3D, PriorNetConfig

    model = PriorNet3D(PriorNetConfig(**{k: tuple(v) if k == "widths" else v for k, v in export["model_config"].items()}))
    model.load_state_dict(export["state_dict"])
    half, _ = export_run(run, tmp_path / "half.pt", half=True)
    assert load_export(half)["state_dict"]["head.conv.weight"].dtype == torch.float16
    with pytest.raises(ExportError, match="exists"):
        export_run(run, tmp_path / "prior.pt")
    damaged = torch.load(path, weights_only=True)
    damaged["state_dict"]["head.conv.weight"] += 1
    torch.save(damaged, tmp_path / "damaged.pt")
    with pytest.raises(ExportError, match="SHA-256"):
        load_export(tmp_path / "damaged.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ExportError, match="not an xraysyn model file"):
        load_export(tmp_path / "other.pt")


@pytest.mark.parametrize("case", ["missing source", "one-case sources only", "grid differs", "non-empty out",
                                  "resume without run"])
def test_bad_inputs_give_one_error_and_leave_the_run_folder_alone(tmp_path, case):
    from xraysyn.data.phantom import make_chest_phantom
    from xraysyn.data.shards import write_shard
    from xraysyn.train.prior_config import DataSource

    out = tmp_path / "run"
    config, resume, match = _config(2), False, None
    if case == "missing source":
        config = config.replace(data__sources=(DataSource(str(tmp_path / "nowhere")),))
        match = "not a folder of shards"
    elif case in ("one-case sources only", "grid differs"):
        shards = tmp_path / "shards"
        n = 1 if case == "one-case sources only" else 2
        for i in range(n):
            ph = make_chest_phantom((8, 8, 8), seed=i)
            write_shard(shards / f"case{i}.npz", ph.hu, ph.bone_mask, ph.world_from_voxel)
        config = config.replace(data__sources=(DataSource(str(shards)),))
        match = "one case each" if n == 1 else "volume_size is 16"
    elif case == "non-empty out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        match = "not empty"
    else:
        resume, match = True, "not a training run folder"
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    with pytest.raises(ConfigError, match=match):
        train_prior(config, out, resume=resume, progress=False)
    after = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert after == before


def test_tensorboard_event_files_when_the_package_is_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train_prior(_config(3, loop__validate_every=3), run, progress=False)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss_total", "lr", "val_psnr_t_prime"} <= tags
    assert [e.step for e in events.Scalars("loss_total")] == [1, 2, 3]
