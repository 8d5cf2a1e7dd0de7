"""model.init: the backbone starts from a state-dict file in every encoder copy; bad files are one error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torchvision

from discorep.checkpoint import CheckpointError
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine import builders
from discorep.engine.config import Config
from discorep.engine.configio import load_config
from discorep.engine.train import pretrain
from discorep.export import export_backbone
from discorep.methods import build_method
from discorep.models.backbones import Encoder
from tests.helpers import tiny_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 8, seed=0, image_size=(64, 64))
    return root / "images"


@pytest.fixture(scope="module")
def init_file(tmp_path_factory):
    """A torchvision resnet18 state dict (fc included, as torchvision writes it), seeded away from ours."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("init") / "resnet18.pth"
    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, path)
    return path


def _expected(init_file):
    return torch.load(init_file, weights_only=True)["state_dict"]


def test_every_encoder_copy_starts_from_the_file(scenes, init_file, tmp_path):
    cfg = tiny_config("odin", scenes, tmp_path, {"model": {"init": str(init_file)}})  # online, target, discovery
    method = build_method(cfg)
    builders.init_backbone(cfg, method)
    expected = _expected(init_file)
    encoders = [m for m in method.modules() if isinstance(m, Encoder)]
    assert len(encoders) == 3
    for enc in encoders:
        for k, v in enc.backbone.state_dict().items():
            assert torch.equal(v, expected[k]), k


def test_one_step_at_zero_lr_exports_the_init_conv_weights(scenes, init_file, tmp_path):
    cfg = tiny_config("r2o", scenes, tmp_path, {"model": {"init": str(init_file)},
                                                "optim": {"base_lr": 0.0}, "train": {"max_steps": 1}})
    run = pretrain(cfg)
    ckpt = sorted((run / "checkpoints").glob("*.pt"))[-1]
    exported = torch.load(export_backbone(checkpoint=ckpt, to="torchvision", out=tmp_path / "tv.pth"),
                          weights_only=True)
    expected = _expected(init_file)
    convs = [k for k, v in expected.items() if k.endswith("weight") and v.dim() == 4]
    assert len(convs) == 20
    for k in convs:  # BN running statistics move in a training forward; conv weights must not at lr 0
        assert torch.equal(exported[k], expected[k]), k


def test_weights_of_another_architecture_are_one_clear_error(scenes, tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    cfg = tiny_config("byol", scenes, tmp_path, {"model": {"init": str(path)}})
    with pytest.raises(CheckpointError, match=r"model.init .*r50.pth.*do not fit.*model.arch"):
        builders.init_backbone(cfg, build_method(cfg))
    cfg = tiny_config("byol", scenes, tmp_path, {"model": {"init": str(tmp_path / "missing.pth")}})
    with pytest.raises(CheckpointError, match="no such file"):
        builders.init_backbone(cfg, build_method(cfg))


def test_posttrain_config_trains_three_steps_from_an_init_file(scenes, init_file, tmp_path):
    """configs/r2o_posttrain.yaml, shrunk to resnet18 at 64 px with a local init file, trains 3 steps."""
    cfg = load_config(Config, CONFIGS / "r2o_posttrain.yaml", [
        f"model.init={init_file}", "model.arch=resnet18", "model.proj_hidden=32", "model.proj_dim=16",
        "model.pred_hidden=32", f"data.root={scenes}", "data.num_workers=0", f"data.prior_cache={tmp_path / 'pc'}",
        "data.prior_size=32", "views.size=64", "views.spanning_size=64", "views.raw_size=64", "method.K0=8",
        "method.features=c4", "train.batch_size=2", "train.max_steps=3", "train.device=cpu", "train.progress=false",
        f"train.out_dir={tmp_path}", "train.picture_images=2", "train.log_every=1"])
    assert cfg.method.name == "r2o" and cfg.model.init == str(init_file)
    run = pretrain(cfg)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]
    assert steps == [1, 2, 3] and all(math.isfinite(json.loads(line)["loss"]) for line in lines if "loss" in line)
