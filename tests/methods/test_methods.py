"""Every registered method trains end to end through the engine, overfits a fixed batch, and owns its
modules (the engine trains, saves and evaluates what the method says)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.config import Config
from discorep.engine.configio import ConfigError, from_dict
from discorep.engine.train import pretrain
from discorep.methods import build_method
from discorep.methods.base import StepInfo
from discorep.methods.registry import BUILTIN_MODULES, method_class, registered_methods
from tests.helpers import METHOD_OVERRIDES, fixed_batch, part, tiny_config

BUILTIN = [n for n in registered_methods() if method_class(n).__module__ in BUILTIN_MODULES]
VARIANTS = ["odin_discrete"]  # settings of a registered method that take another code path
METHODS = BUILTIN + VARIANTS


def test_every_registered_method_has_a_tiny_test_config():
    # A new built-in method adds its tiny settings to tests/helpers.METHOD_OVERRIDES (its only edit outside
    # its own file); the tests below then cover it.
    assert BUILTIN == ["byol", "detcon", "odin", "r2o"]
    assert set(METHODS) <= set(METHOD_OVERRIDES)


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
    changed = [not torch.equal(v, fresh.online.state_dict()[k]) for k, v in part(state, "online").items()
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
    opt = torch.optim.SGD(model.trained_modules().parameters(), lr=0.05, momentum=0.9)
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


@pytest.mark.parametrize("method", METHODS)
def test_the_method_says_what_is_trained_saved_and_evaluated(method, tmp_path):
    cfg = tiny_config(method, tmp_path, tmp_path)
    model = build_method(cfg)
    trained = {id(p) for p in model.trained_modules().parameters()}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}  # nothing trainable left out
    assert trained.isdisjoint(id(p) for p in model.target.parameters())  # EMA copies are not trained
    branch = model.eval_branch()
    assert {id(p) for p in branch.encoder.parameters()} <= trained and branch.projector is not None
    assert len(model.encoders()) == (3 if getattr(model, "discovery", None) is not None else 2)
    # BYOL pools C5 without an FPN: every level gets a gradient; DetCon/R2O pool C4 (layer4 unused).
    assert model.find_unused_parameters() == (cfg.method.features == "c4")


def test_method_options_belong_to_their_method():
    with pytest.raises(ConfigError, match=r"'method.K0' is an option of method 'r2o', not of 'odin'"):
        from_dict(Config, {"method": {"name": "odin", "K0": 8}})
    with pytest.raises(ConfigError, match=r"'method.bogus'.*did you mean|valid keys"):
        from_dict(Config, {"method": {"name": "byol", "bogus": 1}})
    with pytest.raises(ConfigError, match=r"'r2' is not a registered method; did you mean 'r2o'\? registered: "
                                          r"byol, detcon, odin, r2o"):
        from_dict(Config, {"method": {"name": "r2"}})
    cfg = from_dict(Config, {"method": {"name": "odin", "K": 8}, "model": {"fpn": True}})
    assert type(cfg.method) is method_class("odin").Options and cfg.method.K == 8
    assert not hasattr(cfg.method, "K0")  # to_dict / config.yaml hold only the method's own keys
