"""kill -9 while a real process is inside `save_checkpoint`: no torn file is ever visible."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from discorep.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)

# A writer that saves 32 MB checkpoints in a loop; each holds its step in every element.
_WRITER = """
import sys, torch
from discorep.checkpoint import checkpoint_path, save_checkpoint
weights = torch.empty(8 * 2**20)
for step in range(1, 10_000):
    save_checkpoint({"step": step, "weights": weights.fill_(float(step))}, checkpoint_path(sys.argv[1], step))
"""


def _kill_inside_a_write(run_dir: Path, timeout: float = 60.0) -> bool:
    """Start the writer, wait for a temp file after the first complete save, SIGKILL; True if killed mid-write."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(run_dir)])
    ckpt_dir = run_dir / "checkpoints"
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            names = os.listdir(ckpt_dir) if ckpt_dir.is_dir() else []
            if any(n.startswith("step_") for n in names) and any(n.endswith(".tmp") for n in names):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    return any(p.name.endswith(".tmp") for p in ckpt_dir.iterdir())


def test_kill_9_during_a_checkpoint_write_leaves_only_complete_checkpoints(outcome, tmp_path):
    for attempt in range(5):  # the kill can land just after the rename; then try again
        run_dir = tmp_path / f"run{attempt}"
        if _kill_inside_a_write(run_dir):
            break
    else:
        raise AssertionError("never managed to kill the writer inside a save in 5 attempts")
    complete = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    assert complete, "the first checkpoint completed before the kill"
    for path in complete:  # every visible checkpoint is whole and holds what its name says
        state = load_checkpoint(path)
        step = int(path.stem.split("_")[1])
        assert state["step"] == step and torch.all(state["weights"] == float(step))
    latest = latest_checkpoint(run_dir)
    assert latest == complete[-1]
    torn = [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert torn and all(p.stat().st_size < 8 * 2**20 * 4 + 10_000 for p in torn)
    # The resumed run's next save removes the orphaned temp file.
    nxt = int(latest.stem.split("_")[1]) + 1
    save_checkpoint({"step": nxt, "weights": torch.zeros(1)}, checkpoint_path(run_dir, nxt))
    prune_checkpoints(run_dir, keep_last=3)
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    outcome("fault", f"kill -9 inside a checkpoint write (attempt {attempt + 1})",
            f"{len(complete)} complete checkpoints load; temp file ignored, removed by the next save")
