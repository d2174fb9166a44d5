"""SIGTERM and Ctrl-C (SIGINT) during training: finish the step, write a checkpoint, say how to resume.

    with stop_requests() as stop:
        for step in ...:
            ...
            if stop.received:        # "SIGTERM" / "SIGINT" / None
                save a checkpoint; raise RunInterrupted(...)

A second signal of either kind while the first is being handled interrupts at once (KeyboardInterrupt), as
Ctrl-C twice does in most tools. Outside the main thread (where Python cannot install handlers) nothing changes.
"""
from __future__ import annotations

import contextlib
import signal
import threading


class StopRequest:
    def __init__(self):
        self.received: str | None = None

    def handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name


@contextlib.contextmanager
def stop_requests():
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop.handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
