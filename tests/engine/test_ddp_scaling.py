"""Multi-process scaling rules: the learning rate follows the *global* batch (world size × per-device
batch, BYOL's linear scaling rule), and gathered negatives work for any world size and uneven splits.

The LR tests fail if the engine scaled by the per-device batch: for world sizes > 1 the two differ.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from discorep.apps.demodata.scenes import make_scenes
from discorep.engine import train as train_mod
from discorep.engine.config import Config
from discorep.engine.configio import from_dict, to_dict
from discorep.engine.distributed import DistInfo
from discorep.engine.train import Trainer, pretrain
from discorep.losses.contrastive import contrastive_loss
from tests.helpers import free_port, tiny_config

BASE_LR, BATCH = 2.0, 2


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 16, seed=3, image_size=(64, 64))
    return root / "images"


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_peak_lr_scales_with_global_batch(world, scenes, tmp_path, monkeypatch):
    # A rank of a `world`-process run, built without a process group: DDP wrapping is the only part
    # that needs one, and it does not touch the learning rate.
    monkeypatch.setattr(train_mod, "DistributedDataParallel", lambda module, **_: module)
    cfg = tiny_config("byol", scenes, tmp_path, {"optim": {"base_lr": BASE_LR, "warmup_epochs": 0.0},
                                                 "train": {"batch_size": BATCH, "picture_images": 0}})
    trainer = Trainer(cfg, DistInfo(rank=0, world_size=world, local_rank=0, device=torch.device("cpu")),
                      tmp_path / "run")
    assert trainer.global_batch == world * BATCH
    lr = trainer.set_lr(trainer.info())  # step 0, no warmup: the peak of the cosine schedule
    assert lr == pytest.approx(BASE_LR * world * BATCH / 256)
    assert all(g["lr"] == lr for g in trainer.optimizer.param_groups)
    if world > 1:
        assert lr != pytest.approx(BASE_LR * BATCH / 256)  # what scaling by the per-device batch gives
    # steps per epoch (and so warmup and the cosine) also count global batches
    assert trainer.steps_per_epoch == 16 // (world * BATCH)


def _pretrain_worker(rank: int, world: int, port: int, cfg_dict: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    pretrain(from_dict(Config, cfg_dict))


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_two_process_run_logs_lr_of_the_global_batch(scenes, tmp_path):
    cfg = tiny_config("byol", scenes, tmp_path, {"optim": {"base_lr": BASE_LR, "warmup_epochs": 0.0},
                                                 "train": {"batch_size": BATCH, "max_steps": 1,
                                                           "picture_images": 0}})
    mp.spawn(_pretrain_worker, args=(2, free_port(), to_dict(cfg)), nprocs=2, join=True)
    (record,) = [json.loads(line) for line in (tmp_path / "byol" / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 1
    assert record["lr"] == pytest.approx(BASE_LR * 2 * BATCH / 256)


# ------------------------------------------------------------------ gathered negatives, 3 processes
SPLIT = (1, 2, 3)  # uneven: the gather pads to the largest rank and drops the padding again
B, M, D = sum(SPLIT), 3, 8


def _pairs():
    g = torch.Generator().manual_seed(0)
    q1, z2, q2, z1 = (torch.randn(B, M, D, generator=g) for _ in range(4))
    valid = torch.rand(B, M, generator=g) > 0.2
    ids = torch.randint(0, 4, (B, M), generator=g)
    return q1, z2, q2, z1, valid, ids


def _gather_worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=len(SPLIT),
                            timeout=timedelta(seconds=60))
    try:
        start = sum(SPLIT[:rank])
        sl = slice(start, start + SPLIT[rank])
        q1, z2, q2, z1, valid, ids = (t[sl] for t in _pairs())
        loss = contrastive_loss(q1, z2, q2, z1, valid, temperature=0.2, ids=ids)
        torch.save(loss, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_gathered_negatives_with_three_uneven_processes(tmp_path):
    mp.spawn(_gather_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=len(SPLIT), join=True)
    losses = torch.stack([torch.load(tmp_path / f"rank{r}.pt") for r in range(len(SPLIT))])
    q1, z2, q2, z1, valid, ids = _pairs()
    single = contrastive_loss(q1, z2, q2, z1, valid, temperature=0.2, ids=ids)
    # DDP averages over ranks; the mean of the rank losses is the loss of the whole batch in one process.
    assert torch.isclose(losses.mean(), single, rtol=1e-5, atol=1e-6)
