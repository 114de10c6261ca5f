"""The issue's GPU targets against one GPU session's JSON lines, as a markdown table.

    python tools/gpu/gpu_report.py OUT/*.jsonl [--run s3]

Reads the rows ``benchmarks/projector.py`` (``impl``, ``workload``, ``mode``, ``ms``) and the peers' script
``peers_gpu.py`` (``lib``, ``workload``, ``mode``, ``ms``; not part of this repository, copied to ``.gpu/bench/``
by ``tools/gpu/prepare_gpu_inputs.sh``) print in one session, and prints
(1) the targets table: xraysyn (the shipped defaults) per workload and mode, the peers measured in the same
run, the ratios and whether the target is met; (2) every xraysyn variant per workload and mode, fastest
first, with its launch configuration when the row names one; (3) for rows with a profiler ``trace``
(``projector.py --trace N``), where a call's time goes: host lead, GPU busy, gaps, tail and the three
longest GPU activities; (4) from ``tools/gpu/gpu_kernels.py`` rows, the shipped forward march against the
gather-only kernel of the same (widest) packed layout: the fraction of the gather limit reached; (5) every
``gpu_kernels.py`` row per workload, fastest first, with its launch configuration. Rows with an ``error`` are
listed as such.
``--run`` keeps only rows carrying that ``run`` label (files recorded under ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

# The targets on the GPU the peers were measured on (ms): workload, mode → target
TARGETS_MS = {("W1", "fwd"): 1.5, ("W1", "fwd+bwd"): 4.0, ("W2", "fwd"): 7.0, ("W2", "fwd+bwd"): 25.0}
PEERS = ("nanodrr", "flashdrr")


def read_rows(paths: list[str], run: str | None = None) -> list[dict]:
    """The JSON objects of every line that parses as one (other lines are logs), optionally of one run."""
    rows = []
    for path in paths:
        with open(path) as handle:
            for line in handle:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if run is None or row.get("run") == run:
                    rows.append(row)
    return rows


def _times(rows: list[dict]) -> dict:
    """``(name, workload, mode) → ms`` for xraysyn impls and peers (the last row wins if one repeats)."""
    times = {}
    for row in rows:
        name = row.get("impl") or row.get("lib")
        if name and "workload" in row and "mode" in row and "ms" in row and "error" not in row:
            times[(name, row["workload"], row["mode"])] = float(row["ms"])
    return times


def targets_table(rows: list[dict]) -> str:
    times = _times(rows)
    lines = ["| case | target ms | xraysyn ms | met | " + " | ".join(f"{p} ms (×)" for p in PEERS) + " |",
             "|---|---:|---:|:-:|" + "---:|" * len(PEERS)]
    for (workload, mode), target in TARGETS_MS.items():
        ours = times.get(("xraysyn", workload, mode))
        cells = [f"{workload} {mode}", f"{target:g}", "—" if ours is None else f"{ours:.2f}",
                 "—" if ours is None else ("yes" if ours <= target else "no")]
        for peer in PEERS:
            theirs = times.get((peer, workload, mode))
            if theirs is None:
                cells.append("—")
            else:
                ratio = "" if ours is None else f" ({theirs / ours:.1f}×)"
                cells.append(f"{theirs:.2f}{ratio}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms_cell(row: dict, digits: int) -> str:
    """A row's time in ms with ``digits`` decimals, or its error (first 60 characters)."""
    return "error: " + str(row["error"])[:60] if "error" in row else f"{row['ms']:.{digits}f}"


def variants_table(rows: list[dict]) -> str:
    """Every xraysyn implementation per (workload, mode), fastest first."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        impl = row.get("impl", "")
        if impl.startswith("xraysyn") and "workload" in row and "mode" in row:
            groups[(row["workload"], row["mode"])].append(row)
    lines = ["| workload | mode | implementation | ms | launch configuration |", "|---|---|---|---:|---|"]
    for (workload, mode), group in sorted(groups.items()):
        for row in sorted(group, key=lambda r: (("error" in r), r.get("ms", float("inf")))):
            config = "; ".join([*(str(row[k]) for k in ("forward_config", "adjoint_config") if k in row),
                                *_carry_trials(row.get("adjoint_carry_trials_ms"))])
            lines.append(f"| {workload} | {mode} | `{row['impl']}` | {_ms_cell(row, 2)} | {config} |")
    return "\n".join(lines)


def trace_table(rows: list[dict], top: int = 3) -> str:
    """Rows with a ``trace`` (see ``tools/gpu/trace_breakdown.py``): wall = lead + busy + gaps + tail (ms)
    and the ``top`` longest GPU activities per call; empty when no row has one."""
    traced = [row for row in rows if isinstance(row.get("trace"), dict) and "error" not in row]
    if not traced:
        return ""
    lines = ["| workload | mode | implementation | wall | host lead | GPU busy | gaps | tail | longest GPU activities (ms) "
             "| longest CUDA API calls (host ms) |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---|"]

    def longest(items: list[dict], count: int) -> str:
        return ", ".join(f"{k['name']} {k['ms']:.3f}" + (f" ×{k['per_call']:g}" if k["per_call"] != 1 else "")
                         for k in items[:count])

    for row in sorted(traced, key=lambda r: (r["workload"], r["mode"], r["impl"])):
        t = row["trace"]
        cells = [row["workload"], row["mode"], f"`{row['impl']}`"]
        cells += [f"{t[key]:.3f}" for key in ("wall_ms", "lead_ms", "busy_ms", "gaps_ms", "tail_ms")]
        lines.append("| " + " | ".join(cells + [longest(t.get("kernels", []), top),
                                                longest(t.get("api_calls", []), 2)]) + " |")
    return "\n".join(lines)


def _gather_pack(case: str) -> int:
    """The pack of a ``gather-only[...]`` case name (1 when unpacked)."""
    for part in case[case.index("[") + 1:-1].split(","):
        if part.startswith("packed"):
            return int(part[len("packed"):])
    return 1


def gather_table(rows: list[dict]) -> str:
    """Per workload: ``march-fwd[defaults]`` (kernel alone) against the gather-only kernel of the widest packed
    layout timed (the layout the defaults march), and the fraction of that limit reached; empty without both."""
    march = {row["workload"]: row for row in rows if row.get("case") == "march-fwd[defaults]" and "ms" in row}
    limits: dict[str, dict] = {}
    for row in rows:
        case = row.get("case", "")
        if case.startswith("gather-only[") and "ms" in row and row.get("workload") in march:
            best = limits.get(row["workload"])
            key = (_gather_pack(case), -row["ms"])
            if best is None or key > (_gather_pack(best["case"]), -best["ms"]):
                limits[row["workload"]] = row
    if not limits:
        return ""
    lines = ["| workload | forward march (defaults) ms | Gsamples/s | gather-only limit | limit ms | fraction of the limit |",
             "|---|---:|---:|---|---:|---:|"]
    for workload in sorted(limits):
        ours, limit = march[workload], limits[workload]
        rate = ours.get("gsamples_per_s", "—")
        lines.append(f"| {workload} | {ours['ms']:.3f} | {rate} | `{limit['case']}` | {limit['ms']:.3f} | "
                     f"{limit['ms'] / ours['ms']:.0%} |")
    return "\n".join(lines)


def kernel_table(rows: list[dict]) -> str:
    """``tools/gpu/gpu_kernels.py`` rows (kernels alone, CUDA events) per workload, fastest first, with the launch
    configuration the autotuner chose where the row names it; empty without such rows."""
    cases = [row for row in rows if "case" in row and ("ms" in row or "error" in row)]
    if not cases:
        return ""
    lines = ["| workload | kernel case | ms | launch configuration |", "|---|---|---:|---|"]
    for row in sorted(cases, key=lambda r: (r.get("workload", ""), r.get("ms", float("inf")))):
        config = "; ".join([*([row["config"]] if "config" in row else []), *_carry_trials(row.get("carry_trials_ms"))])
        lines.append(f"| {row.get('workload', '')} | `{row['case']}` | {_ms_cell(row, 3)} | {config} |")
    return "\n".join(lines)


def _carry_trials(trials) -> list[str]:
    """The autotuner's best trial with the plane carry off and on (``{"off": ms, "on": ms}``), as one cell
    item, or nothing."""
    if not isinstance(trials, dict) or not trials:
        return []
    return ["autotuner's trials: plane carry " + ", ".join(f"{k} {trials[k]} ms" for k in ("off", "on") if k in trials)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="JSON-lines files of one GPU session")
    parser.add_argument("--run", default=None, help="keep only rows with this run label")
    args = parser.parse_args(argv)
    rows = read_rows(args.files, args.run)
    if not rows:
        sys.exit("no JSON rows in the given files")
    print(targets_table(rows))
    print()
    print(variants_table(rows))
    for extra in (trace_table(rows), gather_table(rows), kernel_table(rows)):
        if extra:
            print()
            print(extra)


if __name__ == "__main__":
    main()
