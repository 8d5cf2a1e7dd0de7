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
