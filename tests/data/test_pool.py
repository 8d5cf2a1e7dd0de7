"""Pool workers must not inherit the set-up's SIGTERM -> KeyboardInterrupt handler (CI saw a worker, terminated
by the parent mid-write, print a zipfile traceback over the one-line "interrupted" message)."""
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from discorep.data.pool import quiet_worker
from discorep.engine.startup import interrupt_on_sigterm


def _handlers() -> tuple[str, str]:
    def name(handler) -> str:  # handlers themselves may be local functions, which do not pickle back
        return handler.name if isinstance(handler, signal.Handlers) else "python"
    return name(signal.getsignal(signal.SIGINT)), name(signal.getsignal(signal.SIGTERM))


def test_workers_leave_signals_to_the_parent():
    with interrupt_on_sigterm():  # what the CLI has installed while the prior cache builds
        assert callable(signal.getsignal(signal.SIGTERM))
        with ProcessPoolExecutor(max_workers=1, initializer=quiet_worker) as pool:
            sigint, sigterm = pool.submit(_handlers).result()
        with ProcessPoolExecutor(max_workers=1) as pool:  # control: without it the handler is inherited
            _, inherited = pool.submit(_handlers).result()
    assert (sigint, sigterm) == ("SIG_IGN", "SIG_DFL")
    assert inherited == "python"


def _recording_loader(path: str):
    """A loader that reports, through the file system, which handlers the process reading the image has."""
    Path(path + f".{os.getpid()}.handlers").write_text(",".join(_handlers()))
    return np.zeros((8, 8, 3), np.uint8)


def test_the_prior_cache_pool_uses_quiet_workers(tmp_path):
    from discorep.data.prior_cache import RegionPriorCache
    items = [(f"k{i}", str(tmp_path / f"img{i}")) for i in range(4)]
    for _, p in items:
        Path(p).write_bytes(b"x")  # only its size and mtime are read by the cache; the loader makes the image
    with interrupt_on_sigterm():
        RegionPriorCache(tmp_path / "cache", "grid", loader=_recording_loader).build(items, num_workers=2,
                                                                                    progress=False)
    seen = {f.read_text() for f in tmp_path.glob("img*.handlers")}
    assert seen == {"SIG_IGN,SIG_DFL"}
