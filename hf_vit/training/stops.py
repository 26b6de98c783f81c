"""How a training run stops before its end: diverged, or asked to by a signal.

SIGTERM (Slurm, Kubernetes, preemptible VMs) and SIGINT (Ctrl-C): the first signal only sets a flag; the loop finishes
its update, writes a checkpoint and stops. A second signal restores the default handling and acts at once.
"""

import signal
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after saving a checkpoint; the message says where and how to resume."""


class NonFiniteLossError(RuntimeError):
    """The loss or the weights became NaN or infinite; training stops and no checkpoint is written after it."""


# What the scripts report as one `error:` line: bad input, the filesystem, divergence, a signal.
TRAINING_ERRORS = (ValueError, OSError, NonFiniteLossError, TrainingInterrupted)


class StopRequests:
    """Context manager that records the first SIGTERM/SIGINT instead of dying on it."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(number).name
        for signum, handler in self._previous.items():  # the next signal acts at once
            signal.signal(signum, handler)

    def __enter__(self) -> "StopRequests":
        try:
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
