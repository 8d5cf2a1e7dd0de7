"""`model.compile`: torch.compile'd encoders train like eager ones and keep checkpoints interchangeable."""

from __future__ import annotations

import math

import pytest
import torch

from discorep.apps.demodata.scenes import make_scenes
from discorep.engine import builders
from discorep.engine.configio import ConfigError
from discorep.engine.train import pretrain
from tests.helpers import final_state, losses_by_step, tiny_config


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 8, seed=5, image_size=(96, 96))
    return root / "images"


@pytest.mark.slow
def test_compiled_run_matches_eager(scenes, tmp_path):
    if builders.compile_unavailable(torch.device("cpu")):
        pytest.skip("no C++ compiler for torch.compile on CPU")
    extra = {"train": {"max_steps": 3, "batch_size": 4, "picture_images": 0}}
    eager = pretrain(tiny_config("r2o", scenes, tmp_path / "eager", extra))
    compiled_cfg = tiny_config("r2o", scenes, tmp_path / "compiled", {**extra, "model": {"compile": "default"}})
    compiled = pretrain(compiled_cfg)
    a, b = losses_by_step(eager), losses_by_step(compiled)
    assert list(a) == list(b) == [1, 2, 3]
    # Same maths, other kernels (fused, reordered float sums): equal to float tolerance, not bit-exact.
    assert all(math.isclose(a[s], b[s], rel_tol=2e-3, abs_tol=1e-4) for s in a), (a, b)
    sa, sb = final_state(eager)["method"], final_state(compiled)["method"]
    assert list(sa) == list(sb)  # Module.compile keeps parameter names: checkpoints load either way
    worst = max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa if sa[k].is_floating_point())
    assert worst < 1e-3


def test_compile_without_a_cpp_compiler_is_a_config_error(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert "C++ compiler" in builders.compile_unavailable(torch.device("cpu"))
    with pytest.raises(ConfigError, match="model.compile='default'.*model.compile: none"):
        builders.compile_encoders(torch.nn.Linear(2, 2), "default", torch.device("cpu"))


def test_compile_none_leaves_the_modules_eager():
    layer = torch.nn.Linear(2, 2)
    assert builders.compile_encoders(layer, "none", torch.device("cpu")) == 0
    assert getattr(layer, "_compiled_call_impl", None) is None
