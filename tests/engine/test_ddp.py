"""1-vs-2-process equivalence: 2 gloo processes with batch b == 1 process with batch 2b.

GroupNorm replaces BatchNorm here: per-device batch statistics make any DDP run differ from a single
process unless BN is synchronised, and SyncBatchNorm does not run on CPU. What is tested is the rest:
identical data split, per-image discovery, gathered negatives, loss normalisation and gradient
averaging.

Odin's segments come from each image alone (`per_image_segments`, patched in as in test_syncbn_ddp.py):
its discovery forward rounds a batch of 4 and two of 2 differently, and k-means on a random network's
features turns such differences into other assignments at near-ties, which no weight tolerance absorbs
(docs/testing.md, "Floats and exactness"). That per-image seeds make k-means batch-independent is
checked in tests/discovery/test_random.py; the rest of Odin's path is checked here.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.config import Config
from discorep.engine.configio import from_dict, to_dict
from discorep.engine.train import pretrain
from discorep.methods.odin import Odin
from tests.engine.test_syncbn_ddp import per_image_segments
from tests.helpers import free_port, part, tiny_config

pytestmark = pytest.mark.distributed


def _worker(rank: int, world: int, port: int, cfg_dict: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    Odin.segment = per_image_segments  # a spawned process: the test's patch does not reach it
    pretrain(from_dict(Config, cfg_dict))


@pytest.mark.parametrize("method", ["detcon", "odin"])
def test_two_processes_match_one_process_with_double_batch(method, tmp_path, monkeypatch):
    monkeypatch.setattr(Odin, "segment", per_image_segments)
    make_scenes(tmp_path / "scenes", 16, seed=2, image_size=(96, 96))
    images = tmp_path / "scenes" / "images"
    common = {"model": {"norm": "gn"}, "train": {"max_steps": 3, "picture_images": 0}}
    single = tiny_config(method, images, tmp_path / "one", {**common, "train": {**common["train"], "batch_size": 4}})
    pretrain(single)
    double = tiny_config(method, images, tmp_path / "two", {**common, "train": {**common["train"], "batch_size": 2}})
    mp.spawn(_worker, args=(2, free_port(), to_dict(double)), nprocs=2, join=True)
    a = load_checkpoint(latest_checkpoint(tmp_path / "one" / method))
    b = load_checkpoint(latest_checkpoint(tmp_path / "two" / method))
    assert a["step"] == b["step"] == 3
    for key, value in part(a, "online").items():
        if value.is_floating_point():
            torch.testing.assert_close(part(b, "online")[key], value, rtol=1e-4, atol=1e-5, msg=f"online.{key}")
