"""Engine behaviour: exact resume, config refusal on resume, non-finite losses, skipped images."""

from __future__ import annotations

import pytest
import torch

from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.train import pretrain
from tests.helpers import final_state, losses_by_step, tiny_config


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 16, seed=1, image_size=(96, 96))
    return root / "images"


@pytest.mark.parametrize("method", ["r2o", "odin_discrete"])
def test_resume_reproduces_losses_and_parameters_exactly(method, scenes, tmp_path):
    full = pretrain(tiny_config(method, scenes, tmp_path / "a", {"train": {"max_steps": 10}}))
    half = tiny_config(method, scenes, tmp_path / "b", {"train": {"max_steps": 5}})
    pretrain(half)
    # Resume with a different number of data workers: the data stream must not depend on it.
    rest = tiny_config(method, scenes, tmp_path / "b", {"train": {"max_steps": 10}, "data": {"num_workers": 1}})
    resumed = pretrain(rest, resume="auto")
    a, b = losses_by_step(full), losses_by_step(resumed)
    assert [a[s] for s in range(6, 11)] == [b[s] for s in range(6, 11)]
    sa, sb = final_state(full), final_state(resumed)
    assert sa["step"] == sb["step"] == 10
    assert list(sa["method"]) == list(sb["method"])  # online, predictor, target (, discovery)
    for key, value in sa["method"].items():
        assert torch.equal(value, sb["method"][key]), f"{key} differs after resume"


def test_bf16_autocast_and_channels_last_train_with_finitelosses_by_step(scenes, tmp_path):
    cfg = tiny_config("odin", scenes, tmp_path, {"train": {"max_steps": 4, "precision": "bf16"},
                                                 "model": {"channels_last": True}})
    run_dir = pretrain(cfg)
    losses = losses_by_step(run_dir)
    assert len(losses) == 4 and all(isinstance(v, float) and v == v for v in losses.values())
    fp32 = losses_by_step(pretrain(tiny_config("odin", scenes, tmp_path / "fp32", {"train": {"max_steps": 4}})))
    assert losses[1] != fp32[1] and abs(losses[1] - fp32[1]) < 0.1 * abs(fp32[1])  # bf16 really ran, close
