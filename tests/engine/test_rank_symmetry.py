"""Every rank issues the same torch.distributed collectives in the same order — with every feature on.

Two gloo processes run the real engine with `model.norm: syncbn` (CPU stand-in), mask pictures,
periodic k-NN/ABO probes, checkpoints, `train.nonfinite: skip` with a non-finite step injected on rank 1
only, a SIGTERM delivered to rank 0 only (checkpoint and stop), then `--resume auto` to the end. Each
rank records its collectives (tests/distributed_tools.py); the sequences must be equal. A collective
issued by one rank alone (e.g. a SyncBN forward in a picture drawn by rank 0) would show up here — or
hang the run, which the timeout turns into a failure.
"""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
import torch.multiprocessing as mp

from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.config import Config
from discorep.engine.configio import from_dict, to_dict
from discorep.errors import Interrupted
from tests.distributed_tools import cpu_syncbn, dump, record_collectives
from tests.helpers import free_port, tiny_config
from tests.engine.test_periodic_eval import _colour_folders

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # ~50 s per method on 2 cores

NONFINITE_STEP, SIGTERM_STEP = 2, 5


def _inject_faults() -> None:
    """Rank 1: an inf activation at NONFINITE_STEP. Rank 0: SIGTERM to itself before SIGTERM_STEP."""
    from discorep.engine.train import Trainer

    original = Trainer.train_step

    def train_step(self, batch):
        if self.dist.rank == 0 and self.step == SIGTERM_STEP:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.dist.rank == 1 and self.step == NONFINITE_STEP:
            layer = self.method.online.encoder.backbone.layer2
            hook = layer.register_forward_hook(lambda m, i, out: out * math.inf)
            try:
                return original(self, batch)
            finally:
                hook.remove()
        return original(self, batch)

    Trainer.train_step = train_step


def _worker(rank: int, world: int, port: int, cfg_dict: dict, out: str, phase: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from discorep.engine.train import pretrain

    if phase == 1:
        _inject_faults()
    log: list = []
    status = 0
    try:
        with cpu_syncbn(), record_collectives(log):
            pretrain(from_dict(Config, cfg_dict), resume="auto" if phase == 2 else None)
    except Interrupted as err:  # the SIGTERM of phase 1: every rank stops with the CLI's exit status 143
        status = err.exit_status
    finally:
        dump(log, __import__("pathlib").Path(out) / f"phase{phase}_rank{rank}.json")
    (__import__("pathlib").Path(out) / f"phase{phase}_rank{rank}.status").write_text(str(status))


# odin_discrete: every rank saves its own part of each checkpoint (its segment store) without a collective
@pytest.mark.parametrize("method", ["byol", "r2o", "odin_discrete"])
def test_both_ranks_issue_the_same_collectives(method, tmp_path):
    ann = make_scenes(tmp_path / "scenes", 16, seed=5, image_size=(96, 96))
    images = tmp_path / "scenes" / "images"
    knn_train, knn_val = _colour_folders(tmp_path / "colours")
    cfg = tiny_config(method, images, tmp_path / "runs", {
        "model": {"norm": "syncbn"},
        "train": {"batch_size": 2, "epochs": 2, "checkpoint_every": 3, "picture_images": 2,
                  "picture_every_epochs": 1, "nonfinite": "skip"},
        "eval": {"every_epochs": 1, "knn_train": str(knn_train), "knn_val": str(knn_val), "knn_k": 3,
                 "objects_coco": str(ann), "objects_images": str(images), "objects_ks": [1, 2],
                 "size": 64, "features": "c4"}})
    for phase in (1, 2):
        mp.spawn(_worker, args=(2, free_port(), to_dict(cfg), str(tmp_path), phase), nprocs=2, join=True)
        logs = [json.loads((tmp_path / f"phase{phase}_rank{r}.json").read_text()) for r in (0, 1)]
        names = [entry[0] for entry in logs[0]]
        for i, (a, b) in enumerate(zip(*logs)):
            assert a == b, f"phase {phase}: collective #{i} differs: rank 0 {a} vs rank 1 {b}"
        assert len(logs[0]) == len(logs[1]), f"phase {phase}: {len(logs[0])} vs {len(logs[1])} collectives"
        # The features this test is about really ran: SyncBN's all_gather, the step flags' all_reduce,
        # the long barriers of the probes (and of the prior build for R2O).
        statuses = [int((tmp_path / f"phase{phase}_rank{r}.status").read_text()) for r in (0, 1)]
        assert statuses == ([128 + signal.SIGTERM] * 2 if phase == 1 else [0, 0])  # rank 1 got no signal
        assert names.count("all_gather") > 10 and "all_reduce" in names and "new_group" in names
    run = tmp_path / "runs" / method
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics]
    assert steps == sorted(steps) and steps[-1] == 8  # stopped at SIGTERM_STEP + 1, resumed to the end
    assert math.isnan(float(next(m["loss"] for m in metrics if m["step"] == NONFINITE_STEP + 1)))
    assert sorted(p.name for p in (run / "masks").glob("*.png")) == ["epoch_000.png", "epoch_001.png",
                                                                      "epoch_002.png"]
    assert load_checkpoint(latest_checkpoint(run))["step"] == 8
