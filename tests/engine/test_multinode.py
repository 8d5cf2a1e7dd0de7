"""Multi-node as torchrun runs it (issue 23): two torchrun "nodes" on 127.0.0.1, one process each.

`--nnodes 2` with the c10d rendezvous that examples/slurm/pretrain.sbatch uses, so the second node's
process has RANK 1 but LOCAL_RANK 0 and LOCAL_WORLD_SIZE 1 (the other DDP tests set RANK = LOCAL_RANK on
one node). Each node has its own scratch (TMPDIR); both share the run folder and the prior cache, as
nodes share a network file system. R2O with a SLIC prior, so both nodes build the cache at once. The
run stops at a checkpoint and resumes across the two nodes; it must equal an uninterrupted 2-process
run on one node, with one writer of checkpoints and metrics, and a complete, valid prior cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from discorep.apps.demodata.scenes import make_scenes
from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.engine.configio import save_config
from tests.helpers import free_port, tiny_config

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # ~2-3 min on 2 shared cores: three 2-process runs

TORCHRUN = Path(sys.executable).with_name("torchrun")
N_IMAGES, HALF, END = 16, 2, 4


def _env(scratch: Path) -> dict:
    scratch.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch),
            "PYTHONPATH": str(Path(__file__).parents[2])}


def _pretrain_args(config: Path, *extra: str) -> list[str]:
    return ["-m", "discorep.cli", "pretrain", "--config", str(config), "--resume", "auto", *extra]


def _two_nodes(config: Path, tmp: Path, tag: str, *extra: str) -> None:
    """`torchrun --nnodes 2` once per "node", as the sbatch script's srun starts them (c10d rendezvous)."""
    port = free_port()
    procs = []
    for node in (0, 1):
        cmd = [str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"multinode-{tag}",
               "--rdzv-conf", f"is_host={1 - node}", "--local-addr", "127.0.0.1", "--max-restarts", "0",
               *_pretrain_args(config, *extra)]
        procs.append(subprocess.Popen(cmd, env=_env(tmp / f"scratch{node}"), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        outs = [proc.communicate(timeout=600)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(out[-3000:] for out in outs)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_torchrun_nodes_match_one_node_and_resume_across_nodes(tmp_path):
    make_scenes(tmp_path / "scenes", N_IMAGES, seed=6, image_size=(96, 96))
    images = tmp_path / "scenes" / "images"
    settings = {"model": {"norm": "gn"}, "train": {"batch_size": 2, "checkpoint_every": HALF, "picture_images": 2,
                                                   "keep_last": 10}}
    # One node, two processes: the reference (LOCAL_RANK = RANK), uninterrupted.
    one = save_config(tiny_config("r2o", images, tmp_path / "one", settings), tmp_path / "one.yaml")
    subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", *_pretrain_args(one, f"train.max_steps={END}")],
                   env=_env(tmp_path / "scratch"), check=True, capture_output=True, timeout=600)
    # Two nodes: stop at HALF (a checkpoint), then resume across both nodes to END.
    two = save_config(tiny_config("r2o", images, tmp_path / "two", settings), tmp_path / "two.yaml")
    _two_nodes(two, tmp_path, "a", f"train.max_steps={HALF}")
    _two_nodes(two, tmp_path, "b", f"train.max_steps={END}")

    run = tmp_path / "two" / "r2o"
    # One writer: one checkpoint per save, one metrics line per step, one set of pictures.
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt")) == [f"step_{s:08d}.pt" for s in (HALF, END)]
    assert [m["step"] for m in _metrics(run)] == list(range(1, END + 1))
    assert not list(run.rglob(".*.tmp")) and not list((tmp_path / "two").glob("*.old-*"))
    # The prior cache both nodes built at once: complete, every file valid, no temp files left.
    cached = sorted((tmp_path / "two" / "prior_cache").glob("*/*.npz"))
    assert len(cached) == N_IMAGES and not list((tmp_path / "two" / "prior_cache").rglob("*.tmp*"))
    for path in cached:
        with np.load(path) as f:
            labels = f["labels"]
            assert labels.dtype == np.int32 and labels.ndim == 2  # ids contiguous 0..M-1, as a prior's are
            assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1)), path
    # Results: the resumed two-node run equals the uninterrupted one-node run.
    ref = _metrics(tmp_path / "one" / "r2o")
    for a, b in zip(ref, _metrics(run), strict=True):
        assert a["step"] == b["step"] and abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(a["loss"])), (a, b)
    sa, sb = load_checkpoint(latest_checkpoint(tmp_path / "one" / "r2o")), load_checkpoint(latest_checkpoint(run))
    assert sa["step"] == sb["step"] == END and sb["world_size"] == 2
    assert list(sa["method"]) == list(sb["method"])
    for key, value in sa["method"].items():
        if value.is_floating_point():
            torch.testing.assert_close(sb["method"][key], value, rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(sb["method"][key], value), key
