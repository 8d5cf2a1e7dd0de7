"""One background thread for `discover`'s per-image writes, so that they overlap the next batch's compute.

Writing an image's outputs (nearest upsampling, the overlay PNG, the zlib npz) releases the GIL in its
heavy parts (numpy, Pillow's encoder, zlib), so one writer thread runs it while the main thread decodes,
encodes and clusters the next batch. The writes keep their order and their inline semantics:

* Calls run one at a time, in submission order (one worker): an image's files are still written in
  its own order (the npz last, meaning "done"), and images complete in the order they were submitted.
* The first failure stops the writing: calls queued behind a failed one are skipped, so the images on
  disk are exactly those before the failure, as when the writes ran inline; the main thread gets the
  failure (the same exception, KeyboardInterrupt included) at its next `submit`, or at `drain`.
* At most `max_pending` calls are queued or running: `submit` waits for the oldest beyond that, which
  bounds the memory held by pending images (decoded pictures and label maps).
* `close` (always, e.g. in a `finally`) skips the calls not yet started and waits for the running one
  (its files are written atomically, so it completes or leaves nothing); `written` then counts exactly
  the calls that completed.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class BackgroundWriter:
    """Runs `submit(fn, *args)` calls in order on one thread (module docstring); `written` counts the
    calls that completed."""

    def __init__(self, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = max_pending
        self.written = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="discover-writer")
        self._pending: deque[Future] = deque()
        self._failed = threading.Event()

    def submit(self, fn: Callable[..., None], *args) -> None:
        """Queue `fn(*args)`; raises the failure of an earlier call once it is known."""
        self._collect_finished()  # a failure surfaces at the first submit after it
        self._pending.append(self._pool.submit(self._run, fn, args))
        while len(self._pending) > self.max_pending:
            self._collect_oldest()

    def drain(self) -> None:
        """Wait for every queued call; raises the first failure."""
        while self._pending:
            self._collect_oldest()

    def close(self) -> None:
        """Skip the calls not yet started, wait for the running one, count what completed. Raises nothing:
        it runs while another exception (the one being reported) is on its way out."""
        self._failed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        while self._pending:
            future = self._pending.popleft()
            if not future.cancelled() and future.exception() is None and future.result():
                self.written += 1

    def _run(self, fn: Callable[..., None], args: tuple) -> bool:
        """In the writer thread: False (skipped) once an earlier call failed or `close` began."""
        if self._failed.is_set():
            return False
        try:
            fn(*args)
        except BaseException:  # KeyboardInterrupt too: the main thread reports it as an interruption
            self._failed.set()
            raise
        return True

    def _collect_oldest(self) -> None:
        """The main thread's only wait for the writer (benchmarks/discover.py times it as "write wait").
        The future leaves the queue only once collected: after a failure or a Ctrl-C here, `close`
        still finds it and counts it if it completed."""
        completed = self._pending[0].result()  # re-raises the call's exception
        self._pending.popleft()
        if completed:
            self.written += 1

    def _collect_finished(self) -> None:
        while self._pending and self._pending[0].done():
            self._collect_oldest()
