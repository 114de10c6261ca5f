"""Compile Triton kernels for a GPU target on a machine without a GPU.

Triton's CPU interpreter executes kernels as numpy code, so it accepts Python that the real
compiler rejects (e.g. an early ``return`` under a constexpr ``if``). Compiling each kernel
variant down to PTX and a cubin (the wheel ships ``ptxas``) catches those errors in CPU-only CI.

The compilation runs in a fresh subprocess without ``TRITON_INTERPRET``: once the interpreter has
run kernels in a process it patches ``triton.language``, and the compiler no longer works there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# The GPU the kernels are benchmarked on: H100 (compute capability 9.0), 32-thread warps.
SM90 = ("cuda", 90, 32)
_TIMEOUT_S = 300


def _compile_one(spec: dict) -> str:
    """PTX of one kernel variant (runs inside the subprocess)."""
    import importlib

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    constexprs = {k: getattr(tl, v[3:]) if isinstance(v, str) and v.startswith("tl.") else v
                  for k, v in spec["constexprs"].items()
                  if not spec.get("skip_absent") or k in kernel.arg_names}
    for param in kernel.params:  # constexprs left out take their defaults (else they would become i32 arguments)
        if param.is_constexpr and param.name not in constexprs:
            if not param.has_default:
                raise ValueError(f"{spec['kernel']}: constexpr {param.name} has no default; give it in the spec")
            constexprs[param.name] = param.default
    names = list(kernel.arg_names)
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = spec.get("pointer_types", {}).get(name, spec.get("default_pointer", "*fp32"))
        else:
            signature[name] = "i32"
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(names.index(n),): v for n, v in constexprs.items()},
                       attrs={(names.index(n),): [["tt.divisibility", 16]] for n in spec.get("aligned", ()) if n in names})
    compiled = triton.compile(source, target=GPUTarget(*SM90), options={"num_warps": spec.get("num_warps", 4)})
    return compiled.asm["ptx"]


def compile_ptx(specs: list[dict]) -> list[str]:
    """PTX of each kernel variant compiled for sm_90, in a clean subprocess.

    Each spec: ``module`` and ``kernel`` (names), ``constexprs`` (name → value; Triton dtypes as
    ``"tl.float32"``), optional ``pointer_types`` (name → ``"*fp16"``...), ``default_pointer``,
    ``aligned`` (argument names, where present, declared divisible by 16 as the launcher does for
    aligned pointers and strides), ``num_warps`` (default 4), ``skip_absent`` (constexprs the kernel does not
    have are left out instead of failing: for kernels of older commits). Integer arguments are ``i32``. Skips the test when this Triton lacks
    the ahead-of-time compile API used here.
    """
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the installed triton
        pytest.skip(f"this triton cannot compile ahead of time: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    driver = ("import importlib.util, json, sys; spec = importlib.util.spec_from_file_location('h', sys.argv[1]); "
              "h = importlib.util.module_from_spec(spec); spec.loader.exec_module(h); "
              "specs = json.loads(sys.stdin.read()); print(json.dumps([h._compile_one(s) for s in specs]))")
    proc = subprocess.run([sys.executable, "-c", driver, os.path.abspath(__file__)],
                          input=json.dumps(specs), capture_output=True, text=True, env=env, timeout=_TIMEOUT_S,
                          check=False)
    if proc.returncode != 0:
        if "unexpected keyword argument" in proc.stderr and "ASTSource" in proc.stderr:  # pragma: no cover
            pytest.skip("this triton's ASTSource differs")
        raise AssertionError(f"kernel compilation failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
