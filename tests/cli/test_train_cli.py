"""``xraysyn train prior`` and ``xraysyn export`` on the command line: a run stopped by SIGTERM sent to its
whole process group (DataLoader workers included) leaves a usable checkpoint and resumes; bad inputs exit 2
with one line and create nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from xraysyn.cli import app
from xraysyn.train.checkpoint import load_checkpoint, step_checkpoints

runner = CliRunner()


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_sigterm_to_the_process_group_checkpoints_and_the_run_resumes(tmp_path):
    config = _write(tmp_path / "run.yaml", "preset: small\ndata: {num_workers: 1}\nloop: {steps: 1000, "
                                            "checkpoint_every: 1000, validate_every: 1000}\n")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "xraysyn", "train", "prior", "--config", str(config), "--out", str(run),
               "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    metrics = run / "metrics.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:  # header, step 0, two steps
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[1][-2000:]
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    last = step_checkpoints(run)[-1]
    stopped_at = load_checkpoint(last)["step"]
    assert last.name == f"step_{stopped_at:08d}.pt" and stopped_at >= 2
    result = runner.invoke(app, ["train", "prior", "--out", str(run), "--resume", "--steps", str(stopped_at + 1),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(step_checkpoints(run)[-1])["step"] == stopped_at + 1


def test_train_then_export_on_the_command_line(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "prior", "--config", "small", "--steps", "2", "--out", str(run),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "best psnr_t_prime" in result.output
    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "prior.pt")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "prior.pt")])
    assert result.exit_code == 2 and "exists" in result.output


@pytest.mark.parametrize("args, message", [
    (["--config", "nope"], "preset"),
    ([], "--config is required"),
    (["--config", "small", "--resume"], "--resume continues a run"),
    (["--resume"], "not a training run folder"),
    (["--config", "{yaml}"], "wieght"),
    (["--config", "small", "--data", "{missing}"], "not a folder of shards"),
    (["--config", "small", "--data", "phantom:0"], "weight"),
    (["--config", "small", "--batch-size", "3", "--steps", "1"], "batch"),
])
def test_bad_inputs_exit_2_with_one_line_and_no_run_folder(tmp_path, args, message):
    bad_yaml = _write(tmp_path / "bad.yaml", "preset: small\ndata:\n  sources: [{path: phantom, wieght: 1}]\n")
    args = [a.format(yaml=bad_yaml, missing=tmp_path / "missing") for a in args]
    if message == "batch":
        args += ["--data", "phantom"]
        bad_yaml.write_text("preset: small\noptim: {accumulation_steps: 2}\n")
        args[1] = str(bad_yaml)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "prior", "--out", str(run), "--no-progress", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not run.exists()
