"""Engine behaviour: exact resume, config refusal on resume, non-finite losses, skipped images."""

from __future__ import annotations

import json

import pytest
import torch

from discorep.data.demo import make_scenes
from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.engine.configio import ConfigError
from discorep.engine.train import NonFiniteLossError, pretrain
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


def test_resume_refuses_a_changed_config_and_names_the_keys(scenes, tmp_path):
    pretrain(tiny_config("byol", scenes, tmp_path, {"train": {"max_steps": 2}}))
    changed = tiny_config("byol", scenes, tmp_path, {"train": {"max_steps": 4}, "optim": {"base_lr": 0.5}})
    with pytest.raises(ConfigError, match="optim.base_lr"):
        pretrain(changed, resume="auto")
    run_dir = pretrain(changed, resume="auto", allow_config_change=True)
    assert _final_state(run_dir)["step"] == 4


def _nan_after(method_cls, bad_step):
    original = method_cls.forward

    def forward(self, batch, info):
        loss, logs = original(self, batch, info)
        return (loss * float("nan") if info.step == bad_step else loss), logs

    return forward


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_non_finite_loss_stops_naming_the_step_or_is_skipped(mode, scenes, tmp_path, monkeypatch):
    from discorep.methods.byol import BYOL

    monkeypatch.setattr(BYOL, "forward", _nan_after(BYOL, 3))
    cfg = tiny_config("byol", scenes, tmp_path, {"train": {"max_steps": 6, "checkpoint_every": 2,
                                                           "nonfinite": mode}})
    if mode == "stop":
        with pytest.raises(NonFiniteLossError, match=r"step 3.*step_00000002\.pt"):
            pretrain(cfg)
        return
    run_dir = pretrain(cfg)
    losses = _losses(run_dir)
    assert losses[4] == "nan"  # the skipped step is logged (JSON has no NaN: a string)
    state = _final_state(run_dir)
    assert state["step"] == 6 and all(torch.isfinite(v).all() for v in state["online"].values()
                                      if v.is_floating_point())


def test_unreadable_images_are_skipped_counted_and_listed(scenes, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(scenes, data)
    (data / "broken.png").write_bytes(b"not an image at all")
    cfg = tiny_config("byol", data, tmp_path, {"train": {"max_steps": 8}, "data": {"max_bad_fraction": 0.2}})
    run_dir = pretrain(cfg)
    listed = (run_dir / "skipped.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(str(data / "broken.png"))
    strict = tiny_config("byol", data, tmp_path / "strict", {"train": {"max_steps": 8},
                                                            "data": {"max_bad_fraction": 0.0}})
    from discorep.engine.train import TooManyBadImagesError

    with pytest.raises(TooManyBadImagesError, match="broken.png|skipped.txt"):
        pretrain(strict)


def test_bf16_autocast_and_channels_last_train_with_finite_losses(scenes, tmp_path):
    cfg = tiny_config("odin", scenes, tmp_path, {"train": {"max_steps": 4, "precision": "bf16"},
                                                 "model": {"channels_last": True}})
    run_dir = pretrain(cfg)
    losses = _losses(run_dir)
    assert len(losses) == 4 and all(isinstance(v, float) and v == v for v in losses.values())
    fp32 = _losses(pretrain(tiny_config("odin", scenes, tmp_path / "fp32", {"train": {"max_steps": 4}})))
    assert losses[1] != fp32[1] and abs(losses[1] - fp32[1]) < 0.1 * abs(fp32[1])  # bf16 really ran, close


def test_a_batch_of_only_unreadable_files_is_refilled_with_readable_ones(tmp_path):
    """Bad files are replaced by the next readable image: batches keep their size (DDP-safe)."""
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"a{i}.png").write_bytes(b"")  # 4 zero-byte files: a whole batch of 4 could be bad
    for i in range(4):
        Image.new("RGB", (64, 64), (60 * i, 90, 200 - 40 * i)).save(data / f"b{i}.png")
    cfg = tiny_config("byol", data, tmp_path, {"train": {"max_steps": 4}, "data": {"max_bad_fraction": 0.5}})
    run_dir = pretrain(cfg)
    assert len((run_dir / "skipped.txt").read_text().splitlines()) == 4
    assert sorted(_losses(run_dir)) == [1, 2, 3, 4]
