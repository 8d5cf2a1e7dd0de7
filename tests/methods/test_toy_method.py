"""A method of one's own is one file: registered by its module, trained, saved and resumed by the real engine.

The toy method lives in a temporary directory (no edit anywhere in discorep), is imported the documented
way (`method.module` in the config), and adds a trainable module under a name the engine has never heard
of (`mixer`). The engine must optimise it, save it and restore it on resume, bit-exactly.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from discorep.checkpoint import checkpoint_path, load_checkpoint
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.configio import ConfigError
from discorep.engine.train import pretrain
from tests.helpers import final_state, losses_by_step, part, tiny_config

TOY_METHOD = '''
"""Toy: BYOL whose predictions pass through a learned residual mixer (a module the engine does not know)."""
from dataclasses import dataclass

import torch
from torch import nn

from discorep.errors import ConfigError
from discorep.losses.byol import byol_loss
from discorep.methods import register_method
from discorep.methods.base import PretrainMethod
from discorep.methods.options import MethodOptions


@dataclass
class ToyOptions(MethodOptions):
    mix: float = 0.5

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.mix <= 1.0:
            raise ConfigError(f"method.mix must be in [0, 1], got {self.mix}")


@register_method("toy")
class Toy(PretrainMethod):
    Options = ToyOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mixer = nn.Linear(cfg.model.proj_dim, cfg.model.proj_dim)

    def forward(self, batch, info):
        both = torch.cat([batch["view1"], batch["view2"]])
        q = self.predictor(self.online.projector(self.online(both)[self.feature].mean(dim=(2, 3))))
        q1, q2 = (q + self.cfg.method.mix * self.mixer(q)).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target.projector(self.target(both)[self.feature].mean(dim=(2, 3))).chunk(2)
        return byol_loss(q1, z2) + byol_loss(q2, z1), {}
'''

TOY = {"method": {"name": "toy", "module": "toy_method", "loss": "byol", "features": "c5", "mix": 0.5}}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 8, seed=2, image_size=(96, 96))
    return root / "images"


@pytest.fixture
def toy_module(tmp_path, monkeypatch):
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "toy_method.py").write_text(textwrap.dedent(TOY_METHOD))
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _cfg(scenes, out, steps: int, extra: dict | None = None):
    return tiny_config("byol", scenes, out, {**TOY, "train": {"name": "toy", "max_steps": steps, "epochs": 2,
                                                               "checkpoint_every": 3}, **(extra or {})})


def test_a_toy_method_in_its_own_file_trains_saves_and_resumes_exactly(toy_module, scenes, tmp_path):
    cfg = _cfg(scenes, tmp_path / "full", 4)
    assert type(cfg.method).__name__ == "ToyOptions" and cfg.method.mix == 0.5  # imported by method.module
    full = pretrain(cfg)
    mixer = part(final_state(full), "mixer")
    assert set(mixer) == {"weight", "bias"}  # saved under its own name
    at_3 = part(load_checkpoint(checkpoint_path(full, 3)), "mixer")
    assert not torch.equal(mixer["weight"], at_3["weight"])  # optimised by the engine

    half = pretrain(_cfg(scenes, tmp_path / "resumed", 3))
    assert part(final_state(half), "mixer")  # the step-3 checkpoint holds it too
    resumed = pretrain(_cfg(scenes, tmp_path / "resumed", 4), resume="auto")
    a, b = losses_by_step(full), losses_by_step(resumed)
    assert list(a) == [1, 2, 3, 4] and a[4] == b[4]  # the resumed step equals the uninterrupted one
    sa, sb = final_state(full)["method"], final_state(resumed)["method"]
    assert list(sa) == list(sb)
    for key, value in sa.items():
        assert torch.equal(value, sb[key]), key


def test_the_toy_method_checks_its_own_options(toy_module, scenes, tmp_path):
    with pytest.raises(ConfigError, match=r"method.mix must be in \[0, 1\], got 2.0"):
        _cfg(scenes, tmp_path, 1, {"method": {**TOY["method"], "mix": 2.0}})
    with pytest.raises(ConfigError, match="'method.K0' is an option of method 'r2o', not of 'toy'"):
        _cfg(scenes, tmp_path, 1, {"method": {**TOY["method"], "K0": 8}})
    with pytest.raises(ConfigError, match="method.module: cannot import 'no_such_toy'"):
        _cfg(scenes, tmp_path, 1, {"method": {**TOY["method"], "module": "no_such_toy"}})
