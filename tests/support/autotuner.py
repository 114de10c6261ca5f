"""A stand-in for Triton's autotuner on a machine without a GPU.

The backends launch autotuned kernels as ``kernel[lambda meta: grid](*args, **constexprs)`` and let the
autotuner add the tuned constexprs. :class:`ChosenConfig` wraps an interpreter kernel the same way and
adds one fixed choice, so a test can check the host side for every choice an autotuner could make:
that the launch leaves the tuned constexprs to it, and that each choice gives the right result.
"""

from __future__ import annotations


class ChosenConfig:
    """``kernel`` launched as if an autotuner had chosen ``choice`` (constexprs, e.g. ``{"BLOCK_R": 64,
    "CARRY": True}``); every launch's caller-given constexprs are kept in ``launched``."""

    def __init__(self, kernel, choice: dict) -> None:
        self.kernel = kernel
        self.choice = dict(choice)
        self.launched: list[dict] = []

    def __getitem__(self, grid):
        def run(*args, **meta):
            clash = meta.keys() & self.choice.keys()
            if clash:  # Triton's autotuner refuses a launch that sets what it tunes
                raise ValueError(f"Conflicting meta-parameters: {', '.join(sorted(clash))}")
            self.launched.append(dict(meta))
            full = {**meta, **self.choice}
            return self.kernel[grid(full) if callable(grid) else grid](*args, **full)

        return run
