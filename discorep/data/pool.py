"""Process-pool workers that leave signals to the parent.

Forked workers inherit the parent's Python signal handlers. During set-up the CLI turns SIGTERM into
KeyboardInterrupt (``engine.startup.interrupt_on_sigterm``), so a worker stopped by the parent's
``terminate()`` would raise inside ``np.savez_compressed`` and print tracebacks over the one-line
"interrupted" message. A terminal's Ctrl-C also reaches every process of the group. The parent alone decides:
workers ignore SIGINT and die on SIGTERM without running Python code (their files are written atomically).
"""
from __future__ import annotations

import signal


def quiet_worker() -> None:
    """`ProcessPoolExecutor(initializer=...)`: SIGINT ignored, SIGTERM back to the default (exit at once)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def loader_worker(worker_id: int) -> None:
    """`DataLoader(worker_init_fn=...)`: SIGINT and SIGTERM ignored. A scheduler's SIGTERM (Slurm's scancel,
    preemption) and a terminal's Ctrl-C reach every process of the group; a loader worker killed first made
    the DataLoader raise "worker killed by signal" in the main process before it could write its
    checkpoint. The main process alone handles them (checkpoint, one line, exit 130 / 143) and shuts its
    workers down (they also exit when it dies: torch's worker watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
