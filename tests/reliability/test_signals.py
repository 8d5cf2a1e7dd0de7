"""Ctrl-C or SIGTERM (preemption) checkpoints and stops cleanly with 128 + signal (130 / 143, not 0: a
scheduler or a `&&` chain must tell it from a finished run); `--resume auto` then finishes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.configio import save_config
from tests.helpers import steps_logged, tiny_config


# "group": SIGTERM to every process, loader workers included, as Slurm's scancel and preemption send it;
# the workers must leave it to the main process, which checkpoints.
@pytest.mark.parametrize("sig,group", [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGTERM, True)])
def test_a_signal_saves_a_checkpoint_exits_128_plus_signal_and_resume_finishes(outcome, sig, group, tmp_path):
    make_scenes(tmp_path / "scenes", 16, seed=3, image_size=(96, 96))
    cfg = tiny_config("byol", tmp_path / "scenes" / "images", tmp_path / "runs",
                      {"train": {"epochs": 25, "checkpoint_every": 1000}, "data": {"num_workers": 1 if group else 0}})
    config = save_config(cfg, tmp_path / "cfg.yaml")
    cmd = [sys.executable, "-m", "discorep.cli", "pretrain", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Its own process group with SIGINT at its default, as a terminal's foreground job: Ctrl-C is SIGINT to
    # the whole group; SIGTERM goes to the main process only, as a scheduler's would.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run_dir = tmp_path / "runs" / "byol"
    deadline = time.time() + 120
    while steps_logged(run_dir) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    stopped_at = load_checkpoint(latest_checkpoint(run_dir))["step"]
    assert 3 <= stopped_at < 100  # checkpointed at the stop, long before checkpoint_every
    assert stopped_at == steps_logged(run_dir)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {sig.name}: stopped after step {stopped_at}, checkpoint saved at "
                      f"{run_dir / 'checkpoints' / f'step_{stopped_at:08d}.pt'}; continue with the same command plus --resume auto"], err
    assert "Traceback" not in err
    done = subprocess.run(cmd + ["--resume", "auto", "train.max_steps=" + str(stopped_at + 2)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, stopped_at + 3))
    outcome("fault", f"{sig.name} mid-run" + (" (preemption" + (", every process)" if group else ")")
                                              if sig == signal.SIGTERM else " (Ctrl-C)"),
            f"checkpoint written, exit {128 + sig}, resume finishes")
