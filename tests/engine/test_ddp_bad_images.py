"""Unreadable images met by one rank only stop every rank alike (issue 23.5).

Each rank used to count its own skips: the rank holding the bad files raised while the others waited out
the 600 s collective timeout and ended in PeerLostError. Now the step's flags say that some rank met new
unreadable images, every rank gathers them, and all stop after the same step with the same message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from discorep.apps.demodata.scenes import make_scenes
from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.data.datasets import ImageFolder
from discorep.data.pretrain import ResumableBatchSampler
from discorep.engine.configio import save_config
from tests.helpers import free_port, tiny_config

pytestmark = pytest.mark.distributed

BATCH, WORLD = 2, 2


def _launch(config: Path, port: int) -> list[subprocess.Popen]:
    """Two `discorep pretrain` processes of one gloo run, as torchrun would start them on one node."""
    procs = []
    for rank in range(WORLD):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
               "LOCAL_WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
        procs.append(subprocess.Popen([sys.executable, "-m", "discorep.cli", "pretrain", "--config", str(config)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def test_bad_files_on_one_rank_stop_both_ranks_at_once_with_one_message(tmp_path):
    make_scenes(tmp_path / "scenes", 16, seed=4, image_size=(96, 96))
    images = tmp_path / "scenes" / "images"
    paths = ImageFolder(images).paths
    # Rank 1's share of the first step, in the sampler's own order; the first file (read at start-up
    # by every rank) stays good so that nothing is known before training.
    def share(seed):
        first = ResumableBatchSampler(len(paths), BATCH, world_size=WORLD, rank=1, seed=seed, total_steps=1)
        return sorted(str(paths[i]) for i, _ in next(iter(first)))

    seed = next(s for s in range(100) if str(paths[0]) not in share(s))
    bad = share(seed)
    for path in bad:
        Path(path).write_bytes(b"not an image")
    cfg = tiny_config("byol", images, tmp_path / "runs", {
        "data": {"max_bad_images": 1, "max_bad_fraction": 0.0},
        "train": {"batch_size": BATCH, "picture_images": 0, "max_steps": 6, "seed": seed}})
    config = save_config(cfg, tmp_path / "cfg.yaml")
    start = time.time()
    procs = _launch(config, free_port())
    try:
        errs = [proc.communicate(timeout=180)[1] for proc in procs]  # a hang guard: the old failure took 600 s
    finally:
        for proc in procs:
            proc.kill()
    elapsed = time.time() - start
    assert [proc.returncode for proc in procs] == [2, 2], errs
    lines = [[line for line in err.splitlines() if line.startswith("error:")] for err in errs]
    assert lines[0] == lines[1] and len(lines[0]) == 1, errs  # the same one line from both ranks
    run_dir = tmp_path / "runs" / "byol"
    assert lines[0][0].startswith("error: 2 of 16 images are unreadable, more than the 1 allowed"), lines
    assert str(run_dir / "skipped.txt") in lines[0][0]
    assert "lost contact" not in errs[0] + errs[1] and "Traceback" not in errs[0] + errs[1]
    assert elapsed < 150  # far below the 600 s collective timeout the old code waited out
    listed = sorted(line.split("\t")[0] for line in (run_dir / "skipped.txt").read_text().splitlines())
    assert listed == bad
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert state["step"] == 1  # the step that met them ran on both ranks and was kept
    assert sorted(path for path, _ in state["skipped"]) == bad
