"""Odin's discrete mode with 2 gloo processes: each rank caches only its own shard on disk, saves its
own part of every checkpoint, and a run resumed from a checkpoint uses exactly the segments (the
integer label maps read from the store) that the uninterrupted run used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from discorep.apps.demodata.scenes import make_scenes
from discorep.checkpoint import checkpoint_path, load_checkpoint, rank_state_path
from discorep.data.pretrain import rank_shard
from discorep.engine.config import Config
from discorep.engine.configio import from_dict, to_dict
from tests.helpers import free_port, tiny_config

pytestmark = pytest.mark.distributed

N_IMAGES, RESUME_AT, END = 16, 5, 7  # batch 2 x 2 ranks: 4 steps per epoch, one version = 2 epochs


def _record_segments(out: Path, rank: int, phase: int) -> None:
    """Odin.segments writes, per step, the indices, the label maps it returns and how many it computed."""
    from discorep.methods.odin import Odin

    segments, segment = Odin.segments, Odin.segment
    computed = [0]

    def counting(self, images, seed):
        computed[0] += len(images)
        return segment(self, images, seed)

    def recording(self, batch, info):
        computed[0] = 0
        labels, frame = segments(self, batch, info)
        torch.save({"index": batch["index"].clone(), "labels": labels.clone(), "computed": computed[0]},
                   out / f"phase{phase}_rank{rank}_step{info.step}.pt")
        return labels, frame

    Odin.segment, Odin.segments = counting, recording


def _worker(rank: int, world: int, port: int, cfg_dict: dict, out: str, phase: int, resume) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from discorep.engine.train import pretrain

    _record_segments(Path(out), rank, phase)
    pretrain(from_dict(Config, cfg_dict), resume=resume)


def test_two_ranks_cache_their_own_shards_and_resume_with_identical_segments(tmp_path):
    make_scenes(tmp_path / "scenes", N_IMAGES, seed=4, image_size=(96, 96))
    cfg = tiny_config("odin_discrete", tmp_path / "scenes" / "images", tmp_path / "runs", {
        "model": {"norm": "gn"}, "method": {"discrete_every_epochs": 2},
        "train": {"batch_size": 2, "max_steps": END, "checkpoint_every": RESUME_AT, "picture_images": 0}})
    run = tmp_path / "runs" / "odin_discrete"
    ckpt = checkpoint_path(run, RESUME_AT)
    for phase, resume in ((1, None), (2, str(ckpt))):  # uninterrupted; then again from the step-5 checkpoint
        mp.spawn(_worker, args=(2, free_port(), to_dict(cfg), str(tmp_path), phase, resume), nprocs=2, join=True)

    state = load_checkpoint(ckpt)
    assert state["extra"] == {"segment_cache_version": 0}  # rank 0's checkpoint holds no label maps
    for rank in (0, 1):
        shard = set(rank_shard(N_IMAGES, 0, 0, 2, rank).tolist())  # version 0 = shard period 0
        part = load_checkpoint(rank_state_path(ckpt, rank, 2))
        assert part["version"] == 0 and part["file"] == f"rank{rank}-of-2-v0.bin"
        assert int(part["filled"].sum()) == len(shard) == N_IMAGES // 2  # its shard, after one epoch
        assert (run / "segment_cache" / part["file"]).stat().st_size <= len(shard) * 16 * 16 * 2  # 64-px raw / 4
        seen = [torch.load(tmp_path / f"phase1_rank{rank}_step{s}.pt") for s in range(END)]
        assert all(set(r["index"].tolist()) <= shard for r in seen[:RESUME_AT])
        assert [r["computed"] for r in seen[:4]] == [2, 2, 2, 2] and seen[4]["computed"] == 0  # epoch 1: cached
        for step in range(RESUME_AT, END):
            a = seen[step]
            b = torch.load(tmp_path / f"phase2_rank{rank}_step{step}.pt")
            assert torch.equal(a["index"], b["index"]), (rank, step)
            assert b["computed"] == 0, "the resumed run must read the restored store, not recompute"
            assert torch.equal(a["labels"], b["labels"]), (rank, step)
