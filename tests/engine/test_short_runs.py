"""Short runs (issue 27): `train.steps` fits every schedule into N steps; `train.max_steps` is a hard stop
whose cut the start line names; the mask pictures say their step and K."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from discorep.apps.demodata.scenes import make_scenes
from discorep.engine import startup, train as train_mod
from discorep.engine.distributed import DistInfo
from discorep.engine.runplan import plan_run
from discorep.engine.schedules import k_at
from discorep.engine.train import Trainer, pretrain
from discorep.methods.base import StepInfo
from discorep.methods.discovery_net import DiscoveryNet, DiscoveryNetOptions
from discorep.viz import TITLE_HEIGHT, grid_picture
from tests.helpers import losses_by_step, tiny_config

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 16, seed=1, image_size=(96, 96))
    return root / "images"  # 16 images, batch 4: 4 steps per data epoch


def _trainer(cfg, run_dir):
    startup.seed_rngs(cfg.train.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, CPU, run_dir)


def test_train_steps_ends_every_schedule_at_its_final_value(scenes, tmp_path, monkeypatch):
    # 4 steps over train.epochs 4 (tiny R2O: K0 8 -> K_f 2 after t_alpha 1 of 4 epochs, cosine lr to 0.01).
    titles = []
    real = train_mod.grid_picture
    monkeypatch.setattr(train_mod, "grid_picture", lambda *a, **kw: titles.append(kw["title"]) or real(*a, **kw))
    cfg = tiny_config("r2o", scenes, tmp_path, {"train": {"steps": 4, "picture_every_epochs": 100},
                                                "optim": {"final_lr": 0.01}})
    trainer = _trainer(cfg, tmp_path / "run")
    assert (trainer.total_steps, trainer.end_step, trainer.steps_per_epoch) == (4, 4, 4)
    trainer.fit()
    assert trainer.step == 4
    end = trainer.info()
    assert end.epoch == pytest.approx(4.0)  # the schedules' end, where a 16-step epochs run would be at 1
    m = cfg.method
    assert trainer.method.current_K(end) == m.K_f == 2
    # lr at the end: the cosine's final value, times R2O's K(t)/16 at K_f.
    assert trainer.lr_at(end) == pytest.approx(0.01 * m.K_f / m.k_lr_reference)
    # The last trained step (step 3, schedule epoch 3) already ran with the decayed K of the schedule.
    assert trainer.method.current_K(trainer.info(3)) == k_at(3, schedule="cosine", K0=8, K_f=2, t_alpha=1, T=4) == 5
    # Pictures: before training and at the end, labelled with their step and the K they show.
    assert titles == ["step 0  K=8", "step 4  K=2"]
    assert sorted(p.name for p in (tmp_path / "run" / "masks").iterdir()) == ["epoch_000.png", "epoch_001.png"]


def test_max_steps_names_what_it_cuts_and_steps_fixes_it(scenes, tmp_path, caplog):
    cfg = tiny_config("r2o", scenes, tmp_path, {"train": {"max_steps": 8}})
    with caplog.at_level(logging.INFO, logger="discorep"):
        cut = _trainer(cfg, tmp_path / "a")
    assert (cut.total_steps, cut.end_step) == (16, 8)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # Step 7 is schedule epoch 1.75: K = floor(2 + 6 cos(pi/2 * 0.75/3)) = 7, never the schedule's 2.
    assert len(warnings) == 1 and warnings[0].startswith(
        "train.max_steps=8 stops the schedules at step 8 of 16 (train.epochs 4 = 16 steps): lr ")
    assert "K will stay ≥ 7 (its schedule ends at 2)" in warnings[0]
    assert warnings[0].endswith("set train.steps=8 for a short whole run")
    caplog.clear()
    past = tiny_config("r2o", scenes, tmp_path, {"train": {"max_steps": 40}})
    with caplog.at_level(logging.INFO, logger="discorep"):
        long = _trainer(past, tmp_path / "b")
    assert long.end_step == 16
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "train.max_steps=40 is past the schedules' end (train.epochs 4 = 16 steps): the run ends at step 16; "
        "set train.steps=40 for a whole run of 40 steps"]
    caplog.clear()
    whole = tiny_config("r2o", scenes, tmp_path, {"train": {"steps": 8}})
    with caplog.at_level(logging.INFO, logger="discorep"):
        _trainer(whole, tmp_path / "c")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "8 steps (train.steps 8)" in caplog.text


def test_steps_equal_to_the_epochs_length_change_nothing(scenes, tmp_path):
    """train.steps = epochs x steps/epoch is the same run as train.epochs alone (the same schedule clock)."""
    base = {"train": {"max_steps": 3, "picture_images": 0}, "optim": {"warmup_epochs": 1.0}}
    a = pretrain(tiny_config("byol", scenes, tmp_path / "a", base))  # lr warm-up, cosine and τ on one clock
    b = pretrain(tiny_config("byol", scenes, tmp_path / "b", {**base, "train": {**base["train"], "steps": 16}}))
    la, lb = losses_by_step(a), losses_by_step(b)
    assert list(la) == [1, 2, 3] and la == lb


def test_plan_keeps_the_epochs_clock_without_steps_and_shares_it_with_steps():
    class T:
        epochs, steps, max_steps = 2.5, None, None

    old = plan_run(T, 100, 8)  # 12 steps per epoch, ceil(2.5 * 12) = 30 steps
    assert (old.total_steps, old.end_step, old.schedule_steps_per_epoch, old.epoch_at(6)) == (30, 30, 12, 0.5)
    T.steps = 5
    short = plan_run(T, 100, 8)
    assert (short.total_steps, short.end_step, short.epoch_at(5)) == (5, 5, 2.5)
    assert short.steps_per_epoch == 12  # data epochs are still real passes over the data


def test_discrete_copies_keep_their_share_of_a_short_run():
    net = DiscoveryNet(torch.nn.Linear(2, 2), DiscoveryNetOptions(discovery_update="discrete", discrete_every_epochs=3))
    # 10 steps over 15 schedule epochs: a copy every 3 epochs = every 2 steps, 5 copies as in the long run.
    copies = [s for s in range(1, 11) if net.update(torch.nn.Linear(2, 2), s, 10 / 15)]
    assert copies == [2, 4, 6, 8, 10]


def test_odin_discrete_note_counts_the_copies_a_cut_run_reaches(scenes, tmp_path):
    cfg = tiny_config("odin_discrete", scenes, tmp_path, {"method": {"discrete_every_epochs": 1}})
    odin = _trainer(cfg, tmp_path / "run").method
    assert odin.schedule_note(StepInfo(5, 1.25, 4, 0)) == "trains with 1 of the schedule's 4 discovery copies"
    assert odin.schedule_note(StepInfo(15, 4.0, 4, 0)) is None
    assert odin.picture_k(StepInfo(0, 0.0, 4, 0)) == 4


def test_a_titled_picture_adds_the_label_strip_above_the_same_picture():
    images = [np.full((32, 32, 3), 90, np.uint8)] * 2
    labels = [np.arange(16).reshape(4, 4) % 3] * 2
    plain = np.asarray(grid_picture(images, labels, tile=40))
    titled = np.asarray(grid_picture(images, labels, tile=40, title="step 8  K=2"))
    assert titled.shape == (plain.shape[0] + TITLE_HEIGHT, plain.shape[1], 3)
    assert np.array_equal(titled[TITLE_HEIGHT:], plain)
    strip = titled[:TITLE_HEIGHT]
    assert strip.max() > 128 and (strip > 128).mean() < 0.5  # light text drawn on the dark strip
    other = np.asarray(grid_picture(images, labels, tile=40, title="step 8  K=3"))
    assert not np.array_equal(other[:TITLE_HEIGHT], strip)  # the label is the text, not a fixed banner
