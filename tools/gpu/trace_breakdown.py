"""Where the wall-clock time of one public projector call goes on a GPU, from a profiler trace.

A benchmark's median (``benchmarks/projector.py``: ``perf_counter`` around ``synchronize``) says how long
a call takes, not why. ``traced_breakdown(step, calls)`` runs ``step`` (one call followed by a device
synchronisation) ``calls`` times under ``torch.profiler``, each call inside a ``record_function`` range,
exports the trace as Chrome-trace JSON and splits every call's wall time (ms) into:

* ``lead_ms``: from the call's start to the first GPU activity (kernel, memcpy or memset) — host work
  with the GPU idle;
* ``busy_ms``: the union of the GPU activities' intervals within the call;
* ``gaps_ms``: idle time between the first and the last GPU activity (host work or synchronisations
  the GPU waited for in the middle of the call);
* ``tail_ms``: from the last GPU activity's end to the call's end (the final synchronisation's return
  and what the host does after it);
* ``kernels``: per GPU activity name (kernels by name, ``Memcpy DtoH`` / ``Memset`` and so on, names cut
  to 80 characters), its duration summed per call and how many times it ran per call;
* ``host_waits_ms`` / ``host_waits``: CUDA runtime or driver calls that block the host
  (``*Synchronize``, blocking ``cudaMemcpy``), summed per call;
* ``api_calls``: every CUDA runtime / driver call by name (launches, allocations such as ``cudaMalloc`` —
  a caching allocator that has to allocate afresh every call shows here —, copies, synchronisations), its
  host time summed per call and how many times it ran per call, longest first.

Per-call values are medians over the traced calls (kernel rows: means). The split is pure arithmetic
over the trace's events (``breakdown(events)``), tested on synthetic events; on a CPU-only torch the
trace has no GPU activity and everything is ``lead_ms`` (the call's whole duration).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections import defaultdict

CALL_LABEL = "xraysyn-call"  # record_function label of one traced call: f"{CALL_LABEL}:{index}"
GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")  # Chrome-trace categories of GPU activity
HOST_API_CATEGORIES = ("cuda_runtime", "cuda_driver")
NAME_CHARS = 80


def _blocks_host(name: str) -> bool:
    """CUDA runtime/driver calls during which the host waits for the device."""
    return "Synchronize" in name or name in ("cudaMemcpy", "cuMemcpyDtoH_v2", "cuMemcpyDtoH")


def _union_ms(intervals: list[tuple[float, float]]) -> float:
    """Total length (ms) of the union of ``(start_us, end_us)`` intervals."""
    total, end_so_far = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= end_so_far:
            continue
        total += end - max(start, end_so_far)
        end_so_far = end
    return total / 1e3


def breakdown(events: list[dict], label: str = CALL_LABEL) -> dict:
    """Split each call range ``f"{label}:i"`` (Chrome-trace ``user_annotation`` events) of ``events``
    into lead / busy / gaps / tail (ms) and per-activity durations; see the module docstring.
    Raises ValueError when no call range is in the trace."""
    calls = sorted(((e["ts"], e["ts"] + e["dur"]) for e in events
                    if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith(label + ":")),
                   key=lambda c: c[0])
    if not calls:
        raise ValueError(f"no {label!r} ranges in the trace: was each call wrapped in record_function?")
    gpu = [(e["ts"], e["ts"] + e.get("dur", 0.0), str(e.get("name", ""))[:NAME_CHARS]) for e in events
           if e.get("cat") in GPU_CATEGORIES and e.get("ph", "X") == "X"]
    host_api = [(e["ts"], e["ts"] + e.get("dur", 0.0), str(e.get("name", ""))) for e in events
                if e.get("cat") in HOST_API_CATEGORIES]
    per_call = defaultdict(list)
    kernel_ms, kernel_count = defaultdict(float), defaultdict(int)
    api_ms, api_count = defaultdict(float), defaultdict(int)
    for start, end in calls:
        mine = [g for g in gpu if start <= g[0] < end]
        wall = (end - start) / 1e3
        wait_ms, waits = 0.0, 0
        for h_start, h_end, name in host_api:
            if start <= h_start < end:
                api_ms[name] += (h_end - h_start) / 1e3
                api_count[name] += 1
                if _blocks_host(name):
                    wait_ms, waits = wait_ms + (h_end - h_start) / 1e3, waits + 1
        per_call["wall_ms"].append(wall)
        per_call["host_waits_ms"].append(wait_ms)
        per_call["host_waits"].append(waits)
        if not mine:
            for key, value in (("lead_ms", wall), ("busy_ms", 0.0), ("gaps_ms", 0.0), ("tail_ms", 0.0)):
                per_call[key].append(value)
            continue
        first, last = min(g[0] for g in mine), max(g[1] for g in mine)
        busy = _union_ms([(g[0], g[1]) for g in mine])
        per_call["lead_ms"].append((first - start) / 1e3)
        per_call["busy_ms"].append(busy)
        per_call["gaps_ms"].append((last - first) / 1e3 - busy)
        per_call["tail_ms"].append(max(end - last, 0.0) / 1e3)
        for g_start, g_end, name in mine:
            kernel_ms[name] += (g_end - g_start) / 1e3
            kernel_count[name] += 1
    n = len(calls)
    result = {key: round(statistics.median(values), 4) for key, values in per_call.items()}
    result["host_waits"] = statistics.median(per_call["host_waits"])
    result["calls"] = n
    result["kernels"] = [{"name": name, "ms": round(kernel_ms[name] / n, 4), "per_call": round(kernel_count[name] / n, 2)}
                         for name in sorted(kernel_ms, key=kernel_ms.get, reverse=True)]
    result["api_calls"] = [{"name": name, "ms": round(api_ms[name] / n, 4), "per_call": round(api_count[name] / n, 2)}
                           for name in sorted(api_ms, key=api_ms.get, reverse=True)]
    return result


def traced_breakdown(step, calls: int = 3, label: str = CALL_LABEL) -> dict:
    """Run ``step`` (one call that ends with a device synchronisation) ``calls`` times under the torch
    profiler (CUDA activities when CUDA is available) and return :func:`breakdown` of the trace."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for index in range(calls):
            with record_function(f"{label}:{index}"):
                step()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as handle:
            events = json.load(handle)["traceEvents"]
    finally:
        os.remove(path)
    return breakdown(events, label)
