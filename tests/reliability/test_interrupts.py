"""Ctrl-C / SIGTERM during the region-prior build stop it promptly, keeping what is cached (issue 13, 12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from discorep.engine.configio import save_config
from tests.helpers import tiny_config

N_IMAGES = 240


def finished_priors(cache: Path) -> list[Path]:
    """The cache's written files: pathlib's glob also matches the dot-named temp files (`.tmp-*.npz`) that a
    worker stopped mid-write leaves for the cache's sweep (`RegionPriorCache.clean_temp`), never read."""
    return [p for p in cache.glob("*/*.npz") if not p.name.startswith(".")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_prior_build_stops_it_and_keeps_the_cache(outcome, sig, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):  # noise at full size: a few hundred ms of SLIC each, far longer than the test waits
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(data / f"n{i:03d}.png")
    cfg = tiny_config("r2o", data, tmp_path / "runs", {"data": {"prior_params": {"n_segments": 16, "resize": 256}}})
    config = save_config(cfg, tmp_path / "cfg.yaml")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    # SIGINT at its default in the child: a job started with `&` by a script (as CI may be) inherits it
    # ignored, and Python then installs no KeyboardInterrupt handler, so Ctrl-C would never arrive.
    proc = subprocess.Popen([sys.executable, "-m", "discorep.cli", "pretrain", "--config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    cache = tmp_path / "runs" / "prior_cache"
    deadline = time.time() + 120
    while len(finished_priors(cache)) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)  # to the main process only, as a scheduler's SIGTERM would be
    try:
        _, err = proc.communicate(timeout=60)  # a hang guard, not a speed measure
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the build ignored the signal")
    cached = finished_priors(cache)
    assert proc.returncode == 128 + sig, err  # 130 for Ctrl-C, 143 for SIGTERM
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted during the region-prior build:") and "rerun to continue" in last, err
    assert "Traceback" not in err
    assert 4 <= len(cached) < N_IMAGES  # stopped long before the end
    for path in cached:  # what is cached stays valid
        with np.load(path) as f:
            assert f["labels"].dtype == np.int32 and f["labels"].shape == (256, 256)
    assert not (tmp_path / "runs" / "r2o").exists()  # nothing was trained: no run folder left
    outcome("fault", f"{signal.Signals(sig).name} during the region-prior build",
            f"stops within seconds (exit {128 + sig}), {len(cached)} of {N_IMAGES} priors kept valid; no run folder")
