"""Training on bad input and faults: unreadable images skipped and listed, non-finite losses, refused resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from discorep.checkpoint import CheckpointError
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.configio import ConfigError
from discorep.engine.train import NonFiniteLossError, pretrain
from tests.helpers import final_state, losses_by_step, tiny_config


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 16, seed=1, image_size=(96, 96))
    return root / "images"


def test_resume_refuses_a_changed_config_and_names_the_keys(outcome, scenes, tmp_path):
    pretrain(tiny_config("byol", scenes, tmp_path, {"train": {"max_steps": 2}}))
    changed = tiny_config("byol", scenes, tmp_path, {"train": {"max_steps": 4}, "optim": {"base_lr": 0.5}})
    with pytest.raises(ConfigError, match="optim.base_lr"):
        pretrain(changed, resume="auto")
    run_dir = pretrain(changed, resume="auto", allow_config_change=True)
    assert final_state(run_dir)["step"] == 4
    outcome("config", "--resume with a changed config", "refused naming optim.base_lr; --allow-config-change resumes")


def test_forced_resume_into_another_model_is_one_clear_error(outcome, scenes, tmp_path):
    pretrain(tiny_config("byol", scenes, tmp_path, {"train": {"max_steps": 2}}))
    wider = tiny_config("byol", scenes, tmp_path, {"train": {"max_steps": 4}, "model": {"proj_dim": 32}})
    with pytest.raises(CheckpointError) as info:
        pretrain(wider, resume="auto", allow_config_change=True)
    msg = str(info.value)
    # The projector's last layer changed shape: counted, one example with both shapes, the file named.
    assert "step_00000002.pt" in msg and "its online, predictor and target weights do not fit" in msg
    assert "with another shape" in msg
    assert "\n" not in msg and "model [32" in msg, msg
    outcome("config", "--resume --allow-config-change into another model shape",
            "CheckpointError counting the reshaped keys, one example, the file")


def _nan_after(method_cls, bad_step):
    original = method_cls.forward

    def forward(self, batch, info):
        loss, logs = original(self, batch, info)
        return (loss * float("nan") if info.step == bad_step else loss), logs

    return forward


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_non_finite_loss_stops_naming_the_step_or_is_skipped(outcome, mode, scenes, tmp_path, monkeypatch):
    from discorep.methods.byol import BYOL

    monkeypatch.setattr(BYOL, "forward", _nan_after(BYOL, 3))
    cfg = tiny_config("byol", scenes, tmp_path, {"train": {"max_steps": 6, "checkpoint_every": 2,
                                                           "nonfinite": mode}})
    if mode == "stop":
        with pytest.raises(NonFiniteLossError, match=r"step 3.*step_00000002\.pt"):
            pretrain(cfg)
        outcome("fault", f"NaN loss at step 3 (train.nonfinite={mode})", "stop naming step 3 and step_00000002.pt" if mode == "stop" else "step skipped and logged, weights finite")
        return
    run_dir = pretrain(cfg)
    losses = losses_by_step(run_dir)
    assert losses[4] == "nan"  # the skipped step is logged (JSON has no NaN: a string)
    state = final_state(run_dir)
    assert state["step"] == 6 and all(torch.isfinite(v).all() for v in state["method"].values()
                                      if v.is_floating_point())
    outcome("fault", f"NaN loss at step 3 (train.nonfinite={mode})", "stop naming step 3 and step_00000002.pt" if mode == "stop" else "step skipped and logged, weights finite")


def test_unreadable_images_are_skipped_counted_and_listed(outcome, scenes, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(scenes, data)
    (data / "broken.png").write_bytes(b"not an image at all")
    cfg = tiny_config("byol", data, tmp_path, {"train": {"max_steps": 8}, "data": {"max_bad_fraction": 0.2}})
    run_dir = pretrain(cfg)
    listed = (run_dir / "skipped.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(str(data / "broken.png"))
    strict = tiny_config("byol", data, tmp_path / "strict", {"train": {"max_steps": 8},
                                                            "data": {"max_bad_fraction": 0.0,
                                                                     "max_bad_images": 0}})
    from discorep.engine.train import TooManyBadImagesError

    with pytest.raises(TooManyBadImagesError, match="broken.png|skipped.txt"):
        pretrain(strict)  # decided at start-up (the file is read first): nothing trained, nothing to lose
    assert not (tmp_path / "strict" / "byol" / "checkpoints").exists()
    assert (tmp_path / "strict" / "byol" / "FAILED.txt").exists()  # kept for its skipped.txt, marked
    outcome("image", "unreadable image during pretraining", "replaced, listed in skipped.txt; TooManyBadImagesError above data.max_bad_fraction")


def test_a_batch_of_only_unreadable_files_is_refilled_with_readable_ones(outcome, tmp_path):
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
    assert sorted(losses_by_step(run_dir)) == [1, 2, 3, 4]
    outcome("image", "a whole batch of zero-byte files", "refilled with readable images; 4 listed in skipped.txt")



def test_resume_on_another_number_of_processes_is_refused_unless_allowed(outcome):
    from discorep.engine.configio import to_dict
    from discorep.engine.train import check_resume_config

    cfg = to_dict(tiny_config("byol", Path("."), Path("out")))
    check_resume_config(cfg, cfg, False, 2, 2)  # same world: fine
    check_resume_config(cfg, cfg, False, None, 4)  # checkpoints from before the world size was recorded
    with pytest.raises(ConfigError, match=r"world size.*checkpoint=.2 \(global batch 8\).*now=.4 \(global batch 16\)"):
        check_resume_config(cfg, cfg, False, 2, 4)
    check_resume_config(cfg, cfg, True, 2, 4)  # --allow-config-change
    outcome("config", "--resume on 4 processes of a run trained on 2", "refused naming both world sizes and global batches")


def test_resume_accepts_options_added_since_the_checkpoint_at_their_defaults_only(outcome):
    """A checkpoint written before an option existed (Odin's discovery_projector_dtype) resumes when the
    option is at its default (the old code's behaviour) and is refused when it is not."""
    from discorep.engine.configio import field_defaults, to_dict
    from discorep.engine.train import check_resume_config

    cfg = tiny_config("odin", Path("."), Path("out"))
    now, defaults = to_dict(cfg), field_defaults(cfg)
    assert defaults["method.discovery_projector_dtype"] == "fp32" and defaults["train.seed"] == 0
    saved = to_dict(cfg)
    del saved["method"]["discovery_projector_dtype"]
    with pytest.raises(ConfigError, match="discovery_projector_dtype: checkpoint=<missing> now='fp32'"):
        check_resume_config(saved, now, False)  # without the defaults: the old refusal
    check_resume_config(saved, now, False, defaults=defaults)
    cfg.method.discovery_projector_dtype = "bf16"
    with pytest.raises(ConfigError, match="discovery_projector_dtype: checkpoint=<missing> now='bf16'"):
        check_resume_config(saved, to_dict(cfg), False, defaults=defaults)
    outcome("config", "--resume of a checkpoint from before an option existed",
            "accepted at the option's default, refused naming the key otherwise")
