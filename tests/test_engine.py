"""Engine behaviour: exact resume, config refusal on resume, non-finite losses, skipped images."""

from __future__ import annotations

import json

import pytest
import torch

from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.data.demo import make_scenes
from discorep.engine.train import pretrain
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 16, seed=1, image_size=(96, 96))
    return root / "images"


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def _final_state(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir))


@pytest.mark.parametrize("method", ["r2o", "odin_discrete"])
def test_resume_reproduces_losses_and_parameters_exactly(method, scenes, tmp_path):
    full = pretrain(tiny_config(method, scenes, tmp_path / "a", {"train": {"max_steps": 10}}))
    half = tiny_config(method, scenes, tmp_path / "b", {"train": {"max_steps": 5}})
    pretrain(half)
    # Resume with a different number of data workers: the data stream must not depend on it.
    rest = tiny_config(method, scenes, tmp_path / "b", {"train": {"max_steps": 10}, "data": {"num_workers": 1}})
    resumed = pretrain(rest, resume="auto")
    a, b = _losses(full), _losses(resumed)
    assert [a[s] for s in range(6, 11)] == [b[s] for s in range(6, 11)]
    sa, sb = _final_state(full), _final_state(resumed)
    assert sa["step"] == sb["step"] == 10
    for part in ("online", "target"):
        for key, value in sa[part].items():
            assert torch.equal(value, sb[part][key]), f"{part}.{key} differs after resume"
    if "discovery" in sa:
        for key, value in sa["discovery"].items():
            assert torch.equal(value, sb["discovery"][key])


def test_bf16_autocast_and_channels_last_train_with_finite_losses(scenes, tmp_path):
    cfg = tiny_config("odin", scenes, tmp_path, {"train": {"max_steps": 4, "precision": "bf16"},
                                                 "model": {"channels_last": True}})
    run_dir = pretrain(cfg)
    losses = _losses(run_dir)
    assert len(losses) == 4 and all(isinstance(v, float) and v == v for v in losses.values())
    fp32 = _losses(pretrain(tiny_config("odin", scenes, tmp_path / "fp32", {"train": {"max_steps": 4}})))
    assert losses[1] != fp32[1] and abs(losses[1] - fp32[1]) < 0.1 * abs(fp32[1])  # bf16 really ran, close
