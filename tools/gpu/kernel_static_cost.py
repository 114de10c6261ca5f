"""Static cost of the march kernels' variants on sm_90, without a GPU.

    python tools/gpu/kernel_static_cost.py [--variants pack4,pack4+plane-carry-y]

Compiles each variant of ``march_adjoint_kernel`` (one channel, the W2 case: 4 corner slots, tiles 4 wide,
128 rays per program) to PTX with Triton, assembles it with the ``ptxas`` shipped in Triton's wheel and
disassembles the cubin with ``cuobjdump``. Prints one JSON line per variant: registers per thread, spill
bytes, SASS instructions in all and in the sample loop (the largest backward branch), and the atomic
(``RED``/``ATOM``) and global load (``LDG``) instructions in that loop. The ``fwd-*`` variants are the forward
march as W1 runs it, without and with empty space skipping.

Why: on the H200 the packed W2 adjoint's time followed neither its atomic requests alone nor its
instructions alone. The general corner carry at 4 slots kept 95 % of the requests and took 21.0 ms against
15.4 ms without it, with 220 against 95 loop instructions (``gpu_kernels.md``). Counting both before a GPU
is lent tells whether a change can pay: ``tools/gpu/adjoint_atomics.py`` counts the requests, this the
instructions.

The kernels compiled are those ``xraysyn`` imports: ``PYTHONPATH=<checkout of an older commit>/src`` compiles
that commit's (switches it does not have yet are left out), e.g. to compare the loop of an older commit with
today's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the W2 adjoint's launch: one channel, 128 rays per program in tiles 4 wide, merged runs
# (every constexpr given: one left out would be compiled as a runtime argument)
_COMMON = {"BLOCK_R": 128, "BLOCK_C": 1, "ACC": "tl.float32", "TILE_W": 4, "PLANE": 0}
VARIANTS = {
    "pack1": {"PACK": 1, "VEC": 1, "CARRY": False},
    "pack1+carry": {"PACK": 1, "VEC": 1, "CARRY": True},
    "pack2": {"PACK": 2, "VEC": 2, "CARRY": False},
    "pack2+carry": {"PACK": 2, "VEC": 2, "CARRY": True},
    "pack4": {"PACK": 4, "VEC": 4, "CARRY": False},
    "pack4+plane-carry-z": {"PACK": 4, "VEC": 4, "CARRY": True, "PLANE": 0},
    "pack4+plane-carry-y": {"PACK": 4, "VEC": 4, "CARRY": True, "PLANE": 1},
}
# the forward march as W1 runs it (two channels, 2 corner slots, tiles 4 wide, 128 rays per program, one sample
# per loop iteration), without and with empty space skipping (its walk is a second, shorter loop)
_FORWARD = {"BLOCK_R": 128, "BLOCK_C": 2, "ACC": "tl.float32", "VEC": 4, "TILE_W": 4, "UNROLL": 1, "PACK": 2}
FORWARD_VARIANTS = {
    "fwd-pack2": {**_FORWARD, "BRICK": 0},
    "fwd-pack2+skip4": {**_FORWARD, "BRICK": 4},
}


def _tools() -> tuple[str, str]:
    """``(ptxas, cuobjdump)`` from Triton's wheel (the newer ptxas first: Triton's PTX may need it)."""
    import triton

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):
        ptxas = os.path.join(bin_dir, name)
        if os.path.exists(ptxas):
            return ptxas, os.path.join(bin_dir, "cuobjdump")
    raise SystemExit(f"no ptxas in {bin_dir}")


def _assemble(ptx: str, ptxas: str, workdir: str, name: str) -> tuple[str, str]:
    """``(ptxas -v report, cubin path)``; the PTX's own version decides which ptxas can read it."""
    path = os.path.join(workdir, name + ".ptx")
    with open(path, "w") as f:
        f.write(ptx)
    cubin = path + ".cubin"
    target = re.search(r"\.target\s+(\S+)", ptx).group(1)
    proc = subprocess.run([ptxas, f"-arch={target}", "-v", path, "-o", cubin], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"ptxas failed for {name}: {proc.stderr[-600:]}")
    return proc.stderr, cubin


def loop_body(sass: str) -> list[str]:
    """The instructions of the largest loop: from the target of the backward branch spanning most
    instructions to that branch (Triton's sample loop)."""
    instructions = [(int(m.group(1), 16), m.group(2)) for m in
                    re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    best = None
    for address, text in instructions:
        branch = re.search(r"BRA\s+(?:`\(\S+\)\s*)?0x([0-9a-f]+)", text)
        if branch and int(branch.group(1), 16) < address:
            start = int(branch.group(1), 16)
            if best is None or address - start > best[1] - best[0]:
                best = (start, address)
    if best is None:
        return []
    return [text for address, text in instructions if best[0] <= address <= best[1]]


def measure(names: list[str]) -> list[dict]:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from support.triton_compile import compile_ptx

    specs = [{"module": "xraysyn.projector.triton.kernels.march", "kernel": "march_forward_kernel",
              "pointer_types": {"nsamp_ptr": "*i32", "vidx_ptr": "*i64", "occ_ptr": "*u8"}, "default_pointer": "*fp32",
              "aligned": ["vol_ptr", "out_ptr", "s_vb", "s_vd", "s_vh"], "constexprs": FORWARD_VARIANTS[name]}
             if name in FORWARD_VARIANTS else
             {"module": "xraysyn.projector.triton.kernels.adjoint", "kernel": "march_adjoint_kernel",
              "pointer_types": {"nsamp_ptr": "*i32", "vidx_ptr": "*i64"}, "default_pointer": "*fp32",
              "aligned": ["grad_ptr", "s_vb", "s_vd", "s_vh"], "constexprs": {**_COMMON, **VARIANTS[name]},
              "skip_absent": True}
             for name in names]
    ptxas, cuobjdump = _tools()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, ptx in zip(names, compile_ptx(specs)):
            report, cubin = _assemble(ptx, ptxas, workdir, name)
            sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
            body = loop_body(sass)
            rows.append({
                "variant": name, "target": "sm_90", "registers": int(re.search(r"Used (\d+) registers", report).group(1)),
                "spill_bytes": int(re.search(r"(\d+) bytes spill stores", report).group(1)),
                "sass_instructions": len(re.findall(r"/\*[0-9a-f]{4,}\*/\s+[^;]*;", sass)),
                "loop_instructions": len(body),
                "loop_atomics": sum(bool(re.match(r"(?:@!?U?P\w+\s+)?(?:RED|ATOM)", text.strip())) for text in body),
                "loop_loads": sum(bool(re.match(r"(?:@!?U?P\w+\s+)?LDG", text.strip())) for text in body),
            })
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    known = [*VARIANTS, *FORWARD_VARIANTS]
    parser.add_argument("--variants", default=",".join(known), help="comma list of " + ", ".join(known))
    args = parser.parse_args(argv)
    names = [name for name in args.variants.split(",") if name]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(known)}")
    for row in measure(names):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
