"""The GPU tools (tools/gpu/) and the user benchmark's helpers run end to end (through Triton's CPU interpreter at tiny sizes), so that a
session on the lent GPU machine does not lose device time to a script error."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

# not imported here: importing triton before another test module sets TRITON_INTERPRET breaks the interpreter
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS_GPU = os.path.join(ROOT, "tools", "gpu")


@pytest.mark.slow  # 75-105 s on 2 cores: every kernel case through Triton's interpreter
def test_gpu_kernel_benchmark_smoke_runs_every_case():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, os.path.join(TOOLS_GPU, "gpu_kernels.py"), "--smoke", "--reps", "1"],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    cases = {row["case"] for row in rows if "case" in row}
    expected = {"march-fwd[tiles8]", "march-adj[merged,tiles8]", "march-adj[merged+carry,tiles8]",
                "march-adj[merged,tiles8,packed2]", "march-adj[merged+carry,tiles8,packed2]",
                "march-fwd[tiles8,packed2]", "pack-corners[2]", "march-fwd[bf16 volume,packed4]", "ray-setup[triton]",
                "bp-gather", "atten-triton", "atten-torch", "ct2xray[march + atten-triton]",
                "march-fwd[defaults]", "march-adj[defaults,api rays]", "march-adj[defaults+plane carry,api rays]",
                "march-adj[defaults+plane carry z,api rays]", "march-adj[defaults,no plane carry,api rays]"}
    assert expected <= cases, expected - cases
    assert all(row["ms"] > 0 for row in rows if "case" in row)
    plane = {row["case"]: row["switches"] for row in rows if "plane carry" in row.get("case", "")}
    assert all(v["carry_max_pack"] == 4 and v["adjoint_pack"] == 4 for k, v in plane.items() if "+plane" in k), plane
    assert plane["march-adj[defaults+plane carry z,api rays]"]["adjoint_plane_axis"] == 0
    assert plane["march-adj[defaults,no plane carry,api rays]"]["tune_plane_carry"] is False
    for row in rows:  # each kernel case ran with the tiles its label names
        if row.get("case", "").startswith("march-") and "switches" in row:
            tiles = "tiles8" if "tiles8" in row["case"] else "runs" if "runs" in row["case"] else None
            key = "forward_tile_width" if row["case"].startswith("march-fwd") else "adjoint_tile_width"
            if tiles is not None:
                assert row["switches"][key] == (8 if tiles == "tiles8" else 0), row
    check = next(row for row in rows if row.get("check") == "api rays vs torch rays")
    assert check["n_samples_equal"] == 1.0 and check["t_near_max_abs_mm"] < 1e-2
    # --only: just the cases whose name contains one of the parts
    only = subprocess.run([sys.executable, os.path.join(TOOLS_GPU, "gpu_kernels.py"), "--smoke", "--reps", "1",
                           "--only", "pack-corners"], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert only.returncode == 0, only.stderr[-3000:]
    assert {json.loads(line)["case"] for line in only.stdout.splitlines()} == {"pack-corners[2]"}
    schemes = {row["case"]: row["switches"]["carry_max_pack"] for row in rows if row.get("case", "").startswith("march-adj[merged")}
    assert all(value == (4 if "+carry" in case else 0) for case, value in schemes.items()), schemes


def test_adjoint_atomic_count_on_a_hand_counted_path():
    """One ray through cells (0,0,0) → (0,0,0) → (0,1,0) → (1,1,1): 4 samples, 3 runs; the y step shares 4
    corners, the (z, x) step 2; packed groups are kept only when all their corners are."""
    sys.path.insert(0, TOOLS_GPU)
    import torch
    from adjoint_atomics import count

    cells = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 1, 0], [1, 1, 1]])[None]
    live = torch.ones(1, 4, dtype=torch.bool)
    result = count(cells, live)
    assert result["per-sample"] == 32
    assert result["merged"] == 24 and result["merged+carry"] == 4 + 6 + 8
    assert result["packed2"] == 12 and result["packed2+carry"] == 2 + 4 + 4
    assert result["packed4"] == 6 and result["packed4+carry"] == 6
    # across y: 1 at the y step (the shared quad kept), 2 at the (z, x) step, 2 at the end
    assert result["packed4+carry[plane z]"] == 6 and result["packed4+carry[plane y]"] == 2 + 1 + 2
    assert result["packed4+carry[plane x]"] == 6 and result["packed4+carry[dominant]"] == 5
    dead_tail = torch.tensor([[True, True, False, False]])
    assert count(cells, dead_tail)["merged"] == 8  # the ray ends in its first cell: one flush


def test_adjoint_atomics_rejects_bad_strides_with_one_clear_message():
    """A stride beyond the detector's pixels or a non-positive size stops before any counting, naming the flag."""
    sys.path.insert(0, TOOLS_GPU)
    import pytest
    from adjoint_atomics import WORKLOADS, main

    pixels = WORKLOADS["W1"]["detector"] ** 2
    for argv, flag in ((["--ray-stride", str(pixels + 1)], "--ray-stride"), (["--ray-stride", "0"], "--ray-stride"),
                       (["--cross-ray", "-1"], "--cross-ray"), (["--cross-ray", "1", "--tile-w", "0"], "--tile-w")):
        with pytest.raises(SystemExit) as stop:
            main(["--workloads", "W1", *argv])
        assert flag in str(stop.value.code)


def test_cross_ray_count_agrees_with_the_per_ray_count_and_merges_only_equal_addresses():
    """Unmerged, the flushes are the per-ray count's plane-carry requests (an independent count, every
    axis); two lanes on one path merge at every step, a path a step later only over the whole march."""
    sys.path.insert(0, TOOLS_GPU)
    import torch
    from adjoint_atomics import WORKLOADS, cell_paths, count, cross_ray_count, plane_carry_flushes

    cells, live = cell_paths(WORKLOADS["smoke"], 1)
    cells, live = cells.reshape(-1, *cells.shape[2:]), live.reshape(-1, live.shape[-1])
    per_ray = count(cells, live)
    for plane, axis in enumerate("zyx"):
        assert plane_carry_flushes(cells, live, plane)[0].numel() == per_ray[f"packed4+carry[plane {axis}]"]

    # along y: (0,0,0) → (0,1,0) keeps the shared quad (1 vector), → (1,1,1) flushes both, the end both
    path = torch.tensor([[0, 0, 0], [0, 1, 0], [1, 1, 1]])
    ray, step, _ = plane_carry_flushes(path[None], torch.ones(1, 3, dtype=torch.bool), 1)
    assert sorted(step.tolist()) == [1, 2, 2, 3, 3]
    late = torch.cat([path[:1], path])  # the same cells one step later
    cells = torch.stack([torch.cat([path, path[-1:]]), torch.cat([path, path[-1:]]), late])
    live = torch.tensor([[True, True, True, False]] * 2 + [[True] * 4])
    result = cross_ray_count(cells, live, plane=1, groups=(1, 2, 4))
    assert result["plane carry"] == 15 and result["same step, 1 lanes"] == 15
    assert result["same step, 2 lanes"] == 10 == result["same step, 4 lanes"] == result["same step, program"]
    # packed voxels written: (0,0,0), then (0,1,0) and (0,2,0), then (1,1,1) and (1,2,1)
    assert result["program, any step"] == 5


def test_empty_space_replay_reports_the_samples_kept():
    proc = subprocess.run([sys.executable, os.path.join(TOOLS_GPU, "empty_space.py"), "--workloads", "W1-cpu",
                           "--bricks", "2,8", "--every", "2"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [row["brick"] for row in rows] == [2, 8]
    for row in rows:  # (the phantom's rays all meet its body near their ends: little or nothing is skipped)
        assert 0 < row["kept_per_ray"] <= 1
        assert all(0 < row[f"kept_per_{tile}"] <= 1 for tile in ("warp", "program_64", "program_128", "program_256"))
        assert 0 < row["walk_lookups_per_ray"] < row["samples_per_ray"]
    fine, coarse = rows
    assert fine["kept_per_ray"] <= coarse["kept_per_ray"] and fine["walk_lookups_per_ray"] > coarse["walk_lookups_per_ray"]
    assert fine["marks_bytes"] == 4 * 32 ** 3 and coarse["marks_bytes"] == 4 * 8 ** 3


def test_host_overhead_benchmark_runs():
    proc = subprocess.run([sys.executable, os.path.join(TOOLS_GPU, "host_overhead.py"), "--calls", "5"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [row["call"] for row in rows] == ["forward_project", "forward_project[rays not kept]",
                                             "forward_project[no skipping]", "forward_project[new poses]", "backproject"]
    assert all(0 < row["host_us_min"] <= row["host_us_median"] for row in rows)
    forward = rows[0]  # the forward's first kernel (the packing pass) comes before its last sync and launch
    assert 0 < forward["before_first_kernel_us_median"] and 0 < forward["after_last_sync_us_median"]
    assert forward["before_first_kernel_us_median"] < forward["until_main_us_median"] <= forward["host_us_median"]


def test_projector_benchmark_reports_pinned_launch_configurations(triton_config):
    """Pinned launch configurations (a TritonConfig's forward_launch / adjoint_launch) are reported per mode (the
    kernels a mode runs only)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import projector as bench

    triton_config(forward_launch=(64, 4), adjoint_launch=(256, 8))
    assert bench.launch_configs("adj") == {"adjoint_config": "pinned BLOCK_R=256 warps=8"}
    assert bench.launch_configs("fwd") == {"forward_config": "pinned BLOCK_R=64 warps=4"}
    assert set(bench.launch_configs("fwd+bwd")) == {"forward_config", "adjoint_config"}


class _Config:  # what the reports read of a triton.Config (hashable by identity, as the autotuner's keys)
    def __init__(self, num_warps, **kwargs):
        self.kwargs, self.num_warps = kwargs, num_warps


class _Tuner:
    def __init__(self, best=None, timings=None):
        self.best_config, self.configs_timings = best, timings


def test_tuner_choice_reports_the_kernel_object_that_ran_and_the_plane_carry_trials():
    """Of the adjoint's two autotuned objects, the one that ran since the choices were forgotten is reported,
    with the best trial per carry setting when it tuned the carry; the report shows them in its tables."""
    sys.path.insert(0, TOOLS_GPU)
    import gpu_report

    from xraysyn.projector.triton import forget_launch_choices
    from xraysyn.projector.triton.launch import tuner_choice

    fixed = _Tuner(_Config(4, BLOCK_R=128))
    on, off, off_slow = _Config(8, BLOCK_R=256, CARRY=True), _Config(8, BLOCK_R=256, CARRY=False), \
        _Config(4, BLOCK_R=64, CARRY=False)
    carry = _Tuner(on, {on: [11.0, 10.8, 11.3], off: [15.4, 15.2, 15.6], off_slow: [19.0, 18.0, 20.0]})
    forget_launch_choices((fixed,))
    assert fixed.best_config is None and tuner_choice((fixed, _Tuner())) == {}
    choice = tuner_choice((fixed, carry))
    assert choice == {"config": "BLOCK_R=256 CARRY=True warps=8", "carry_trials_ms": {"on": 11.0, "off": 15.4}}
    row = dict(impl="xraysyn", workload="W2", mode="adj", ms=12.0, adjoint_config=choice["config"],
               adjoint_carry_trials_ms=choice["carry_trials_ms"])
    assert gpu_report.variants_table([row]).splitlines()[2].endswith(
        "| BLOCK_R=256 CARRY=True warps=8; autotuner's trials: plane carry off 15.4 ms, on 11.0 ms |")
    kernel_row = dict(case="march-adj[defaults,api rays]", workload="W2", ms=11.5, **choice)
    assert gpu_report.kernel_table([kernel_row]).splitlines()[2] == (
        "| W2 | `march-adj[defaults,api rays]` | 11.500 | BLOCK_R=256 CARRY=True warps=8; "
        "autotuner's trials: plane carry off 15.4 ms, on 11.0 ms |")


def test_kernel_static_cost_reports_registers_and_the_sample_loop():
    """The sm_90 static cost of two adjoint variants (Triton's own ptxas and cuobjdump, no GPU): the plane carry
    adds instructions to the sample loop but no atomic sites (2 vector atomics per cell flush either way); and
    of the forward without and with empty space skipping."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(TOOLS_GPU, "kernel_static_cost.py"),
                           "--variants", "pack4,pack4+plane-carry-y,fwd-pack2,fwd-pack2+skip4"], capture_output=True,
                          text=True, env=env, timeout=600, check=False)
    if proc.returncode != 0 and "no ptxas" in proc.stderr:
        pytest.skip("this triton ships no ptxas")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["variant"]: row for row in map(json.loads, proc.stdout.splitlines())}
    plain, carry = rows["pack4"], rows["pack4+plane-carry-y"]
    assert plain["loop_atomics"] == carry["loop_atomics"] == 2
    assert 0 < plain["loop_instructions"] < carry["loop_instructions"] < plain["sass_instructions"]
    assert plain["spill_bytes"] == carry["spill_bytes"] == 0 and 0 < plain["registers"] <= 255
    # the forward's sample loop: 4 vector loads per sample (two channels, 2 slots) with or without empty space
    # skipping, whose walk adds a loop of its own, not work to this one (at most the per-lane sample index)
    forward, skipping = rows["fwd-pack2"], rows["fwd-pack2+skip4"]
    assert forward["loop_loads"] == skipping["loop_loads"] == 4 and forward["loop_atomics"] == 0
    assert forward["loop_instructions"] <= skipping["loop_instructions"] <= forward["loop_instructions"] + 3
    assert skipping["sass_instructions"] > forward["sass_instructions"]


def test_gpu_report_tables_targets_peers_and_variants(tmp_path):
    """The report reads one session's JSON lines (logs in between are skipped) and says per target whether
    the shipped defaults met it, with the peers' same-run times and ratios; variants fastest first."""
    sys.path.insert(0, TOOLS_GPU)
    import gpu_report

    lines = [
        "stage defaults: 12 s",
        json.dumps({"impl": "xraysyn", "workload": "W1", "mode": "fwd", "ms": 1.4}),
        json.dumps({"impl": "xraysyn[ahead=0]", "workload": "W1", "mode": "fwd", "ms": 1.7,
                    "forward_config": "BLOCK_R=128 UNROLL=2 warps=4"}),
        json.dumps({"impl": "xraysyn", "workload": "W2", "mode": "fwd+bwd", "ms": 26.0}),
        json.dumps({"impl": "xraysyn[cmax=4]", "workload": "W2", "mode": "fwd+bwd", "error": "boom"}),
        json.dumps({"lib": "nanodrr", "workload": "W1", "mode": "fwd", "ms": 2.8}),
        json.dumps({"lib": "flashdrr", "workload": "W2", "mode": "fwd+bwd", "ms": 65.0}),
    ]
    path = tmp_path / "session.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows = gpu_report.read_rows([str(path)])
    targets = gpu_report.targets_table(rows).splitlines()
    assert "| W1 fwd | 1.5 | 1.40 | yes | 2.80 (2.0×) | — |" in targets
    assert "| W2 fwd+bwd | 25 | 26.00 | no | — | 65.00 (2.5×) |" in targets
    assert "| W1 fwd+bwd | 4 | — | — | — | — |" in targets
    variants = gpu_report.variants_table(rows).splitlines()
    w1 = [line for line in variants if line.startswith("| W1 | fwd")]
    assert w1[0].startswith("| W1 | fwd | `xraysyn` | 1.40") and "BLOCK_R=128 UNROLL=2" in w1[1]
    assert any("`xraysyn[cmax=4]` | error: boom" in line for line in variants)
    assert gpu_report.trace_table(rows) == ""
    traced = dict(impl="xraysyn", workload="W2", mode="adj", ms=24.0, trace=dict(
        wall_ms=24.1, lead_ms=0.2, busy_ms=23.5, gaps_ms=0.3, tail_ms=0.1,
        kernels=[dict(name="march_adjoint_kernel", ms=22.9, per_call=1), dict(name="Memset (Device)", ms=0.1, per_call=2),
                 dict(name="unpack", ms=0.05, per_call=1), dict(name="fourth", ms=0.01, per_call=1)],
        api_calls=[dict(name="cudaMalloc", ms=0.4, per_call=2), dict(name="cuLaunchKernelEx", ms=0.02, per_call=3),
                   dict(name="cudaEventRecord", ms=0.001, per_call=1)]))
    assert gpu_report.gather_table(rows) == ""
    kernels = [dict(case="march-fwd[defaults]", workload="W2", ms=8.0, gsamples_per_s=250.0),
               dict(case="gather-only[256x8,tiles4]", workload="W2", ms=5.0),
               dict(case="gather-only[packed2,128x4,tiles8]", workload="W2", ms=7.0),
               dict(case="gather-only[packed4,128x4,tiles4]", workload="W2", ms=6.5),
               dict(case="gather-only[packed4,64x2,tiles8]", workload="W2", ms=6.0),
               dict(case="gather-only[packed2,64x2,tiles8]", workload="W1", ms=1.0)]  # no W1 march row
    assert gpu_report.gather_table(kernels).splitlines()[2:] == [
        "| W2 | 8.000 | 250.0 | `gather-only[packed4,64x2,tiles8]` | 6.000 | 75% |"]
    assert gpu_report.kernel_table(rows) == ""
    adjoints = [dict(case="march-adj[defaults]", workload="W2", ms=22.4, config="{'BLOCK_R': 256} warps=8"),
                dict(case="march-adj[merged,tiles8,packed4]", workload="W2", ms=15.4),
                dict(case="march-adj[defaults,api rays]", workload="W2", error="out of memory")]
    assert gpu_report.kernel_table(adjoints).splitlines()[2:] == [
        "| W2 | `march-adj[merged,tiles8,packed4]` | 15.400 |  |",
        "| W2 | `march-adj[defaults]` | 22.400 | {'BLOCK_R': 256} warps=8 |",
        "| W2 | `march-adj[defaults,api rays]` | error: out of memory |  |"]
    table = gpu_report.trace_table(rows + [traced]).splitlines()
    assert table[-1] == ("| W2 | adj | `xraysyn` | 24.100 | 0.200 | 23.500 | 0.300 | 0.100 | "
                         "march_adjoint_kernel 22.900, Memset (Device) 0.100 ×2, unpack 0.050 | "
                         "cudaMalloc 0.400 ×2, cuLaunchKernelEx 0.020 ×3 |")
