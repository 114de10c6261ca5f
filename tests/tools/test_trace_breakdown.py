"""tools/gpu/trace_breakdown.py: the split of a call's wall time from a profiler trace, on hand-made
traces whose answer is known, and one real (CPU) profiler trace."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "gpu"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # projector.py, the user benchmark that serves --trace

import trace_breakdown as tb  # noqa: E402


def _call(index, ts, dur):
    return {"ph": "X", "cat": "user_annotation", "name": f"{tb.CALL_LABEL}:{index}", "ts": ts, "dur": dur}


def _gpu(name, ts, dur, cat="kernel"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_breakdown_of_two_hand_made_calls():
    """Times in µs. Call 0 (0–1000): pack 100–230, DtoH copy 120–125 (overlaps the pack), march 300–900
    (lead 100, busy 130 + 600 = 730, gap 70, tail 100), one cudaStreamSynchronize of 50 and a launch
    (not a wait). Call 1 (2000–3200): march 2050–2850 alone (lead 50, busy 800, tail 350). Activity
    outside both calls is ignored."""
    events = [
        _call(0, 0.0, 1000.0), _call(1, 2000.0, 1200.0),
        _gpu("pack_corners_kernel", 100.0, 130.0), _gpu("Memcpy DtoH (Device -> Pinned)", 120.0, 5.0, "gpu_memcpy"),
        _gpu("march_forward_kernel", 300.0, 600.0),
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "ts": 230.0, "dur": 50.0},
        {"ph": "X", "cat": "cuda_driver", "name": "cuLaunchKernelEx", "ts": 290.0, "dur": 8.0},
        _gpu("march_forward_kernel", 2050.0, 800.0),
        _gpu("unrelated_kernel", 1500.0, 100.0),
    ]
    out = tb.breakdown(events)
    assert out["calls"] == 2
    assert out["wall_ms"] == pytest.approx((1.0 + 1.2) / 2)
    assert out["lead_ms"] == pytest.approx((0.1 + 0.05) / 2)
    assert out["busy_ms"] == pytest.approx((0.73 + 0.8) / 2)
    assert out["gaps_ms"] == pytest.approx((0.07 + 0.0) / 2)
    assert out["tail_ms"] == pytest.approx((0.1 + 0.35) / 2)
    assert out["host_waits_ms"] == pytest.approx((0.05 + 0.0) / 2)
    kernels = {k["name"]: k for k in out["kernels"]}
    assert set(kernels) == {"march_forward_kernel", "pack_corners_kernel", "Memcpy DtoH (Device -> Pinned)"}
    assert kernels["march_forward_kernel"]["ms"] == pytest.approx((0.6 + 0.8) / 2)
    assert kernels["pack_corners_kernel"]["per_call"] == pytest.approx(0.5)
    assert out["kernels"][0]["name"] == "march_forward_kernel"  # largest first
    assert out["api_calls"] == [{"name": "cudaStreamSynchronize", "ms": 0.025, "per_call": 0.5},
                                {"name": "cuLaunchKernelEx", "ms": 0.004, "per_call": 0.5}]
    # each call's parts add up to its wall time (lead + busy + gaps + tail), checked per call through medians
    single = tb.breakdown(events[:1] + events[2:7])
    assert single["lead_ms"] + single["busy_ms"] + single["gaps_ms"] + single["tail_ms"] == pytest.approx(1.0)


def test_breakdown_without_gpu_activity_is_all_lead_and_needs_call_ranges():
    out = tb.breakdown([_call(0, 10.0, 400.0)])
    assert out["lead_ms"] == pytest.approx(0.4) and out["busy_ms"] == 0.0 and out["kernels"] == []
    with pytest.raises(ValueError, match="record_function"):
        tb.breakdown([_gpu("march_forward_kernel", 0.0, 10.0)])


def test_traced_breakdown_of_a_real_cpu_profile():
    import torch

    x = torch.rand(200, 200)
    out = tb.traced_breakdown(lambda: x @ x, calls=2)
    assert out["calls"] == 2 and out["wall_ms"] > 0 and out["lead_ms"] == out["wall_ms"]
    with pytest.raises(ValueError, match="at least 1"):
        tb.traced_breakdown(lambda: None, calls=0)


def test_projector_benchmark_rows_carry_the_trace():
    """``benchmarks/projector.py --trace N`` adds the breakdown of N profiled calls to the timing row."""
    import projector as bench

    row = bench.run_case("xraysyn", "W1-cpu", "fwd", "cpu", 1, None, trace=1)
    assert row["ms"] > 0 and row["trace"]["calls"] == 1 and row["trace"]["wall_ms"] > 0
    assert "trace" not in bench.run_case("xraysyn", "W1-cpu", "fwd", "cpu", 1, None)
