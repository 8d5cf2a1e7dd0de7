"""`pretrain --resume RUN_FOLDER` (issue 27): the run's own config.yaml, resume-safe overrides only, a
finished run says so and exits 0; a finished run prints one summary, from rank 0 only."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from discorep.apps.demodata.scenes import make_scenes
from discorep.cli import main
from discorep.engine.configio import save_config
from tests.helpers import final_state, losses_by_step, tiny_config


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 8, seed=3, image_size=(64, 64))
    return root / "images"


def _config(scenes: Path, tmp: Path, **train) -> Path:
    cfg = tiny_config("byol", scenes, tmp / "runs", {"train": {"name": "mine", "picture_images": 0, **train},
                                                    "model": {"norm": "gn"}})
    path = tmp / "mine.yaml"
    save_config(cfg, path)
    return path


def test_resume_by_run_folder_continues_then_says_already_complete(scenes, tmp_path, capsys, caplog):
    config = _config(scenes, tmp_path, steps=4, max_steps=2)
    run = tmp_path / "runs" / "mine"
    assert main(["pretrain", "--config", str(config)]) == 0
    first = capsys.readouterr().out
    # One summary: what was done (2 steps x global batch 4), where things are, what to run next.
    assert first.count("pretraining done: 2 steps (train.steps 4), 8 images seen (2 x global batch 4)") == 1
    assert f"  checkpoint:  {run / 'checkpoints' / 'step_00000002.pt'}" in first
    assert f"discorep discover --checkpoint {run} " in first and f"discorep export --checkpoint {run} " in first
    assert "transfer" not in first  # no such command yet

    # No --config: the run folder's config.yaml; lifting the hard stop is resume-safe.
    assert main(["pretrain", "--resume", str(run), "train.max_steps=null"]) == 0
    second = capsys.readouterr().out
    assert "pretraining done: 4 steps (train.steps 4, 2 in this session), 16 images seen" in second
    assert final_state(run)["step"] == 4 and sorted(losses_by_step(run)) == [1, 2, 3, 4]

    # Finished: one line, exit 0, nothing trained.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="discorep"):
        assert main(["pretrain", "--resume", str(run)]) == 0
    assert "already complete at step 4 (train.steps 4); nothing to do" in caplog.text
    assert "pretraining done" not in capsys.readouterr().out and sorted(losses_by_step(run)) == [1, 2, 3, 4]


def test_resume_by_folder_refuses_what_would_change_the_run(scenes, tmp_path, capsys):
    config = _config(scenes, tmp_path, steps=2)
    run = tmp_path / "runs" / "mine"
    assert main(["pretrain", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "optim.base_lr=0.5", "train.log_every=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --resume {run}: optim.base_lr would change what the run trains")
    assert err[0].endswith("pass --allow-config-change to resume anyway")
    assert main(["pretrain", "--resume", "auto"]) == 2
    assert "--resume RUN_FOLDER (which reads the run's own config.yaml)" in capsys.readouterr().err
    assert main(["pretrain", "--resume", str(tmp_path)]) == 2  # not a run folder
    assert "not a run folder with a config.yaml; give the run's config with --config FILE" in capsys.readouterr().err


def test_a_moved_run_folder_resumes_from_where_it_now_is(scenes, tmp_path, capsys, caplog):
    config = _config(scenes, tmp_path, steps=2)
    assert main(["pretrain", "--config", str(config)]) == 0
    moved = tmp_path / "elsewhere" / "kept"
    moved.parent.mkdir()
    (tmp_path / "runs" / "mine").rename(moved)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="discorep"):
        assert main(["pretrain", "--resume", str(moved)]) == 0
    assert "already complete at step 2 (train.steps 2)" in caplog.text
    assert not (tmp_path / "runs" / "mine").exists()  # nothing recreated at the old place


@pytest.mark.distributed
def test_a_finished_run_prints_one_summary_under_two_gloo_ranks(scenes, tmp_path):
    config = _config(scenes, tmp_path, steps=2, batch_size=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "discorep.cli", "pretrain",
                           "--config", str(config)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.count("pretraining done:") == 1, out
    assert "pretraining done: 2 steps (train.steps 2), 8 images seen (2 x global batch 4)" in out
    assert out.count("run folder:") == 1  # the summary's; rank 1 prints nothing
