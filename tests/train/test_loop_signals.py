"""The training loop's stop handler (:class:`xraysyn.train.loop._StopFlag`) when a group signal ends the DataLoader
workers: a SIGCHLD pending behind the SIGTERM (a worker that died first) is swallowed quietly."""

from __future__ import annotations

import signal
import sys
import threading

import pytest

from xraysyn.train.loop import _StopFlag

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX thread signals")


def test_a_pending_sigchld_behind_sigterm_is_swallowed_quietly(monkeypatch):
    unraisable, calls = [], []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)  # where CPython reports an ignored signal
    previous = signal.signal(signal.SIGCHLD, lambda signum, frame: calls.append(signum))  # as the DataLoader does
    main = threading.main_thread().ident
    both = {signal.SIGTERM, signal.SIGCHLD}
    try:
        with _StopFlag() as stop:
            # Both pending at once, as when `kill -- -PGID` ends a worker before the trainer runs its handlers;
            # CPython then runs them in signal-number order: SIGTERM (15), which replaces the SIGCHLD handler,
            # then SIGCHLD (17).
            signal.pthread_sigmask(signal.SIG_BLOCK, both)
            try:
                signal.pthread_kill(main, signal.SIGCHLD)
                signal.pthread_kill(main, signal.SIGTERM)
                assert both <= signal.sigpending()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, both)
            assert stop.signal_name == "SIGTERM"
        assert [str(u.exc_value) for u in unraisable] == []  # was: "Signal 17 ignored due to race condition"
        assert calls == []  # the loader's handler did not run while stopping
        assert signal.getsignal(signal.SIGCHLD) is not signal.SIG_DFL  # restored on exit
    finally:
        signal.signal(signal.SIGCHLD, previous)
