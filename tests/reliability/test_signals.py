"""SIGTERM (preemption) checkpoints and stops cleanly; `--resume auto` then finishes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.configio import save_config
from tests.helpers import steps_logged, tiny_config


def test_sigterm_saves_a_checkpoint_and_resume_finishes(outcome, tmp_path):
    make_scenes(tmp_path / "scenes", 16, seed=3, image_size=(96, 96))
    cfg = tiny_config("byol", tmp_path / "scenes" / "images", tmp_path / "runs",
                      {"train": {"epochs": 25, "checkpoint_every": 1000}})
    config = save_config(cfg, tmp_path / "cfg.yaml")
    cmd = [sys.executable, "-m", "discorep.cli", "pretrain", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "runs" / "byol"
    deadline = time.time() + 120
    while steps_logged(run_dir) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    stopped_at = load_checkpoint(latest_checkpoint(run_dir))["step"]
    assert 3 <= stopped_at < 100  # checkpointed at the stop, long before checkpoint_every
    assert stopped_at == steps_logged(run_dir)
    done = subprocess.run(cmd + ["--resume", "auto", "train.max_steps=" + str(stopped_at + 2)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, stopped_at + 3))
    outcome("fault", "SIGTERM mid-run (preemption)", "checkpoint written, exit 0, resume finishes")
