"""The GPU benchmark scripts run end to end (through Triton's CPU interpreter at tiny sizes), so that a
session on the lent GPU machine does not lose device time to a script error."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

# not imported here: importing triton before another test module sets TRITON_INTERPRET breaks the interpreter
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_kernel_benchmark_smoke_runs_every_case():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_kernels.py"), "--smoke", "--reps", "1"],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    cases = {row["case"] for row in rows}
    expected = {"march-fwd[tiles8]", "march-adj[merged,tiles8]", "march-adj[merged,tiles8,packed2]",
                "march-fwd[tiles8,packed2]", "pack-corners[2]", "march-fwd[bf16 volume,packed4]", "ray-setup[triton]",
                "bp-gather", "atten-fused", "ct2xray[fused march]", "ct2xray[march + atten-fused]"}
    assert expected <= cases, expected - cases
    assert all(row["ms"] > 0 for row in rows)
