"""Stopping a run cleanly when it is told to (SIGTERM on preemptible machines, pods and batch
schedulers; SIGINT from Ctrl-C).

While a stage trains, the first SIGTERM or SIGINT only records the request: the current step
finishes, the stage's checkpoint (params, optimizer states, data iterator, step; the RNG is
derived from the config's seed and the step) is written at that step, and `Preempted` is
raised; `python -m sgg_jax.main` prints where it stopped and how to resume and exits with
`EXIT_PREEMPTED`. The same command then resumes from that step, and the run ends as an
uninterrupted one would, bit for bit (tests/test_preemption.py). A second SIGINT stops at
once (KeyboardInterrupt), for a user who does not want to wait for the step.

In a multi-process run every process must stop at the same step, so the request is shared
(an all-gather of one flag) every `sync_every` steps; a single process checks every step.
Outside the training loop the default handlers stay: there is nothing to save there, and the
files the run writes are written whole or not at all.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import jax
import numpy as np

log = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL: stopped on request, "the user is invited to retry" (the same command
# resumes); distinct from errors (2) and crashes (1).
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """A stage stopped on a signal after checkpointing `step`."""

    def __init__(self, signal_name: str, stage: str, step: int, num_steps: int,
                 checkpoint_dir: str):
        self.signal_name, self.stage, self.step = signal_name, stage, step
        self.num_steps, self.checkpoint_dir = num_steps, checkpoint_dir
        super().__init__(f"stopped by {signal_name} in stage '{stage}' at step {step} of "
                         f"{num_steps}; checkpoint saved in {checkpoint_dir}; run the same "
                         "command again to resume from there")


class StopRequest:
    """Context manager: records the first SIGTERM / SIGINT instead of dying (main thread
    only: elsewhere signals cannot be caught and the defaults stay)."""

    def __init__(self, sync_every: int = 1):
        self.signum: int | None = None
        self.sync_every = max(int(sync_every), 1)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        if self.signum is None:
            self.signum = signum
            log.warning("%s received: finishing this step and saving a checkpoint "
                        "(Ctrl-C again stops at once)", self.signal_name)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def should_stop(self, step: int = 0, force: bool = False) -> bool:
        """Whether to stop after `step`: this process was signalled (one process), or any
        process was (several; decided together every `sync_every` steps, or now with `force`:
        every process must make the same calls)."""
        if jax.process_count() == 1:
            return self.signum is not None
        if step % self.sync_every and not force:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
        signalled = [int(f) for f in np.ravel(flags) if int(f)]
        if signalled and self.signum is None:
            self.signum = signalled[0]  # another process was told; stop together
        return bool(signalled)
