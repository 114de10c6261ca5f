"""The ``triton_config`` fixture: run one test under a Triton configuration other than the default.

``triton_config(forward_pack=1, adjoint_pack=1)`` makes the active :class:`~xraysyn.projector.triton.TritonConfig`
the one in force with those fields replaced, until the test ends (each call builds on the previous one);
it returns the configuration now in force. Registered for ``tests/projector`` and ``tests/tools`` by their
``conftest.py``.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest


@pytest.fixture
def triton_config():
    from xraysyn.projector.triton import active_config, use_config

    with contextlib.ExitStack() as stack:
        def configure(**changes):
            return stack.enter_context(use_config(replace(active_config(), **changes)))

        yield configure
