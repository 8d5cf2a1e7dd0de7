"""discover's background writer (eval/background.py): order, bound, first error stops, exact counts."""

from __future__ import annotations

import threading
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from discorep.errors import Interrupted
from discorep.eval.background import BackgroundWriter


def test_calls_run_in_order_and_are_counted():
    ran: list[int] = []
    writer = BackgroundWriter(max_pending=3)
    try:
        for i in range(10):
            writer.submit(ran.append, i)
            assert len(writer._pending) <= 3  # the bound: submit waited for the oldest beyond it
        writer.drain()
    finally:
        writer.close()
    assert ran == list(range(10)) and writer.written == 10


def test_first_failure_stops_the_writing_and_is_raised_as_is():
    ran: list[int] = []
    full = OSError(28, "No space left on device")

    def write(i: int) -> None:
        if i == 2:
            raise full
        ran.append(i)

    writer = BackgroundWriter(max_pending=8)
    with pytest.raises(OSError) as caught:
        try:
            for i in range(6):
                writer.submit(write, i)
            writer.drain()
        finally:
            writer.close()
    assert caught.value is full
    assert ran == [0, 1] and writer.written == 2  # nothing after the failed call ran


def test_a_failure_surfaces_at_the_next_submit():
    writer = BackgroundWriter(max_pending=8)
    try:
        writer.submit(_raise, KeyboardInterrupt())
        wait(list(writer._pending))
        with pytest.raises(KeyboardInterrupt):  # a Ctrl-C inside a write reaches the main thread as one
            writer.submit(print, "never")
    finally:
        writer.close()
    assert writer.written == 0


def test_close_skips_queued_calls_and_waits_for_the_running_one():
    """An error in the main thread: the running write completes (and counts), the queued ones never run."""
    started, go, ran = threading.Event(), threading.Event(), []

    def slow(i: int) -> None:
        started.set()
        go.wait(10)
        ran.append(i)

    writer = BackgroundWriter(max_pending=8)
    for i in range(4):
        writer.submit(slow, i)
    started.wait(10)
    threading.Timer(0.05, go.set).start()
    writer.close()
    assert ran == [0] and writer.written == 1


def _raise(err: BaseException) -> None:
    raise err


def test_ctrl_c_during_compute_reports_exactly_the_written_images(tmp_path, monkeypatch):
    """Ctrl-C in the main thread while writes are pending: the count in the message is the number of
    complete outputs on disk, and the rerun finishes the rest."""
    import discorep.eval.discover as discover

    images = _noise_images(tmp_path / "in", 5)
    real = discover.encode_batch
    monkeypatch.setattr(discover, "encode_batch", _failing_second_call(real, KeyboardInterrupt()))
    opts = dict(checkpoint="random:resnet18", images=images, out=tmp_path / "out", ks="2,4", size=64,
                features="c4", device="cpu", batch_size=2, refine="none")
    with pytest.raises(Interrupted) as caught:
        discover.run_discover(**opts)
    done = _complete_outputs(tmp_path / "out")
    assert f"; {done} of 5 images done" in str(caught.value) and done <= 2
    assert not list((tmp_path / "out").glob(".*.tmp"))  # no half-written file
    monkeypatch.setattr(discover, "encode_batch", real)
    summary = discover.run_discover(**opts)
    assert summary["kept_from_earlier_run"] == done and summary["written"] == 5


def _complete_outputs(out: Path) -> int:
    return sum(1 for f in out.glob("*.npz") if f.with_suffix(".png").is_file())


def _noise_images(folder: Path, n: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def _failing_second_call(real, err: BaseException):
    """`real`, except that its second call (discover's second batch) raises `err`."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise err
        return real(*args, **kwargs)

    return wrapped


def test_a_failed_clustering_stops_the_run_after_the_earlier_batches(tmp_path, monkeypatch):
    """Clustering runs on discover's worker thread: its failure reaches the caller as itself, the
    batches before it are written completely and the failed batch's images are not written at all."""
    import discorep.eval.discover as discover

    images = _noise_images(tmp_path / "in", 6)
    monkeypatch.setattr(discover, "cluster_batch", _failing_second_call(discover.cluster_batch, MemoryError("cluster")))
    with pytest.raises(MemoryError, match="cluster"):
        discover.run_discover(checkpoint="random:resnet18", images=images, out=tmp_path / "out", ks="2,4",
                              size=64, features="c4", device="cpu", batch_size=2, refine="none")
    assert sorted(f.stem for f in (tmp_path / "out").glob("*.npz")) == ["p0", "p1"]
    assert _complete_outputs(tmp_path / "out") == 2
    assert not list((tmp_path / "out").glob(".*.tmp"))
