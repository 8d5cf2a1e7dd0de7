"""Every method trains end to end through the engine, and overfits a fixed batch."""

from __future__ import annotations

import json
import math

import pytest
import torch

from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.train import pretrain
from discorep.methods import build_method
from discorep.methods.base import StepInfo
from tests.helpers import fixed_batch, tiny_config

METHODS = ["byol", "detcon", "odin", "odin_discrete", "r2o"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 16, seed=0, image_size=(96, 96))
    return root / "images"


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_20_steps_through_the_engine(method, scenes, tmp_path):
    # 16 images / batch 4 = 4 steps per epoch; 5 epochs = 20 steps.
    cfg = tiny_config(method, scenes, tmp_path, {"train": {"epochs": 5}})
    run_dir = pretrain(cfg)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 21))
    assert all(math.isfinite(r["loss"]) for r in lines)
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert state["step"] == 20
    fresh = build_method(cfg)
    changed = [not torch.equal(v, fresh.online.state_dict()[k]) for k, v in state["online"].items()
               if v.is_floating_point()]
    assert all(changed[:5]) and sum(changed) > 0.9 * len(changed)
    pictures = sorted(p.name for p in (run_dir / "masks").glob("*.png"))
    assert pictures[0] == "epoch_000.png" and "epoch_005.png" in pictures
    if method == "r2o":  # the K(t) curriculum is logged and falls from K0 after t_alpha
        ks = [r["K"] for r in lines]
        assert ks[0] == 8 and ks[-1] < 8


@pytest.mark.parametrize("method", METHODS)
def test_loss_decreases_on_a_fixed_batch(method, scenes, tmp_path):
    cfg = tiny_config(method, scenes, tmp_path, {"train": {"batch_size": 8}})
    torch.manual_seed(0)
    model = build_method(cfg)
    batch = fixed_batch(cfg, 8)
    opt = torch.optim.SGD(model.online_modules().parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(25):
        info = StepInfo(step=0, epoch=0.0, total_epochs=cfg.train.epochs, seed=0)  # same masks every step
        loss, _ = model(batch, info)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_step(info, tau=0.99, steps_per_epoch=1000)
        losses.append(float(loss.detach()))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses
