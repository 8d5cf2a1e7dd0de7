"""What a log shows (issue 13): one process logs, no reprs, no progress-bar debris, the expected duration."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

import discorep.engine.logger as run_logger
from discorep.cli import _setup_logging, main
from discorep.data.prior_cache import BuildStats


def test_the_expected_duration_is_said_once_after_the_first_timed_steps(monkeypatch):
    clock = iter([100.0, 102.0, 104.0, 106.0, 108.0, 110.0, 112.0])  # one step every 2 s
    monkeypatch.setattr(run_logger.time, "perf_counter", lambda: next(clock))
    eta = run_logger.ExpectedDuration(start_step=10, end_step=70, after=5)
    said = [eta.update(step) for step in range(11, 18)]
    # step 11 starts the clock (its own time is warm-up); steps 12..16 are 5 timed steps of 2 s;
    # 70 - 16 = 54 steps remain: 108 s = 1.8 min.
    assert said[:5] == [None] * 5 and said[6] is None
    assert said[5] == ("5 steps timed: 2.00 s/step; expect about 1.8 min for the remaining 54 steps "
                       "(plus per-epoch pictures and probes)")


def test_only_rank_0_logs_progress(monkeypatch):
    levels = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        _setup_logging(verbose=False)
    assert levels == [logging.INFO, logging.WARNING]


def test_build_stats_read_as_counts_in_logs():
    stats = BuildStats(computed=1, loaded=3)
    stats.record("failed", "a.jpg", "BadImageError: truncated")
    assert str(stats) == "3 loaded, 1 computed, 0 recomputed (corrupt), 1 unreadable"
    assert "%s" % stats == str(stats)  # what builders' log line prints


def test_no_progress_bar_when_output_is_not_a_terminal(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / "in" / f"{i}.png")
    assert main(["discover", "--checkpoint", "random:resnet18", "--images", str(tmp_path / "in"), "--out",
                 str(tmp_path / "o"), "--k", "2", "--size", "64", "--features", "c4"]) == 0
    from discorep.apps.demodata.scenes import make_scenes

    make_scenes(tmp_path / "scenes", 3, seed=4, image_size=(64, 64))
    assert main(["eval", "objects", "--checkpoint", "random:resnet18", "--coco", str(tmp_path / "scenes" / "annotations.json"),
                 "--images", str(tmp_path / "scenes" / "images"), "--k", "2", "--size", "64", "--features", "c4"]) == 0
    captured = capsys.readouterr()
    assert "img/s" not in captured.err + captured.out and "\r" not in captured.err  # captured: not a TTY


def test_pretraining_logs_its_expected_duration(tmp_path, caplog):
    from discorep.apps.demodata.scenes import make_scenes
    from discorep.engine.train import pretrain
    from tests.helpers import tiny_config

    make_scenes(tmp_path / "scenes", 8, seed=2, image_size=(64, 64))
    with caplog.at_level(logging.INFO, logger="discorep"):
        pretrain(tiny_config("byol", tmp_path / "scenes" / "images", tmp_path / "runs",
                             {"train": {"max_steps": 8, "epochs": 8}}))
    said = [r.getMessage() for r in caplog.records if "expect about" in r.getMessage()]
    assert len(said) == 1 and "for the remaining 2 steps" in said[0], said  # after steps 2..6 are timed
