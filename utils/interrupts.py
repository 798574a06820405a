"""SIGINT (Ctrl-C) and SIGTERM during training: noted, and acted on where the run can stop and resume."""
from __future__ import annotations

import os


class Interrupted(Exception):
    """A SIGINT or SIGTERM acted on at a batch boundary."""


class Interrupts:
    """SIGINT (Ctrl-C) and SIGTERM during training: noted by the handler and acted on at the next batch
    boundary, where the checkpoint resumes exactly (a stop inside a forward pass, an optimizer step or
    an accumulation window would save a state no uninterrupted run has: BatchNorm statistics moved, a
    batch trained twice). Raised at once while evaluating, where nothing changes, and on a second
    signal, which stops without saving."""

    def __init__(self):
        self.signal: int | None = None
        self.at_once = False  # evaluation: KeyboardInterrupt in the handler
        self.forced = False   # a second signal: what the loop held is not saved

    def handle(self, signum, frame) -> None:
        if self.at_once:
            raise KeyboardInterrupt(f"signal {signum}")
        if self.signal is not None:
            self.forced = True
            raise KeyboardInterrupt(f"signal {signum}, a second time")
        self.signal = signum
        os.write(2, f"signal {signum}: stopping after this batch (again to stop at once, without saving)\n".encode())
        # (os.write: a print here could land inside a print of the loop's, which raises on re-entry)
