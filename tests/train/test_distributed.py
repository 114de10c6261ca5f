"""DistributedDataParallel on the CPU (gloo): two processes on half batches = one process on the whole batch,
and torchrun runs the CLI with one writer; its checkpoint resumes in a single process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from xraysyn.train.config_io import to_dict
from xraysyn.train.prior_config import preset_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_half_batches_give_the_gradients_of_one_on_the_whole_batch(tmp_path):
    from support.ddp_worker import one_step_gradients

    config = to_dict(preset_config("small").replace(loop__batch_size=4))
    one_step_gradients(0, 1, 0, str(tmp_path / "one.pt"), config)
    mp.spawn(one_step_gradients, args=(2, _free_port(), str(tmp_path / "two.pt"), config), nprocs=2, join=True)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert one["grads"].keys() == two["grads"].keys()
    for name, g in one["grads"].items():  # relative error of each parameter's gradient
        norm = float(g.norm())
        assert norm > 0, name
        relative = float((two["grads"][name] - g).norm()) / norm
        assert relative <= 1e-6, (name, relative)
    # the logged losses are the mean over the processes = the loss of the whole batch
    assert two["losses"]["total"] == pytest.approx(one["losses"]["total"], rel=1e-6)


@pytest.mark.slow
def test_torchrun_two_processes_write_one_run_that_resumes_in_one_process(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "xraysyn", "train", "prior", "--config", "small", "--steps", "2",
               "--out", str(run), "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]  # one writer: each step logged once
    resume = [sys.executable, "-m", "xraysyn", "train", "prior", "--out", str(run), "--resume", "--steps", "3",
              "--no-progress"]
    done = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2", "3"]
