"""No run lost or mixed (issue 13): reruns refused or moved aside, bad images decided at start-up, failed
starts leave no folder, outputs follow the umask, and a run folder works as `--checkpoint` everywhere."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.cli import main
from discorep.apps.demodata.scenes import make_scenes
from discorep.data.images import DatasetError
from discorep.engine.configio import ConfigError, save_config, to_dict
from discorep.engine.train import RunFolderError, TooManyBadImagesError, pretrain
from tests.helpers import losses_by_step, tiny_config
from tests.reliability.readonly import read_only_folder


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 16, seed=1, image_size=(96, 96))
    return root


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    """A finished 2-step run folder (checkpoints at steps 1 and 2)."""
    out = tmp_path_factory.mktemp("runs")
    yield pretrain(tiny_config("byol", scenes / "images", out, {"train": {"max_steps": 2, "checkpoint_every": 1}}))
    shutil.rmtree(out, ignore_errors=True)  # ~250 MB of checkpoints: the suite must fit a small CI disk


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_rerunning_into_a_run_is_refused_and_overwrite_moves_it_aside(outcome, scenes, tmp_path, capsys):
    cfg = tiny_config("byol", scenes / "images", tmp_path, {"train": {"max_steps": 2}})
    run_dir = pretrain(cfg)
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(RunFolderError, match=r"--resume auto.*train.name=NEW_NAME.*--overwrite"):
        pretrain(cfg)
    assert (run_dir / "metrics.jsonl").read_text() == before  # nothing appended, nothing restarted
    config = save_config(cfg, tmp_path / "cfg.yaml")
    assert main(["pretrain", "--config", str(config)]) == 2
    assert "already holds a run (latest checkpoint step_00000002.pt)" in _error_line(capsys)
    assert main(["pretrain", "--config", str(config), "--overwrite", "--resume", "auto"]) == 2
    assert "give one of them" in _error_line(capsys)
    pretrain(cfg, overwrite=True)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("byol.old-")]
    assert len(moved) == 1 and (moved[0] / "metrics.jsonl").read_text() == before  # the old run, intact
    assert load_checkpoint(latest_checkpoint(moved[0]))["step"] == 2
    assert sorted(losses_by_step(run_dir)) == [1, 2]  # the new run's own log, not appended to the old one
    outcome("fault", "pretrain rerun into a folder with checkpoints, no --resume",
            "refused naming --resume auto / train.name / --overwrite; --overwrite moves it to <name>.old-<time>")


@pytest.mark.parametrize("method", ["r2o", "byol"])
def test_a_folder_of_only_unreadable_images_stops_at_start_up(outcome, method, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        (data / f"bad{i}.jpg").write_bytes(b"" if i % 2 else b"not an image")
    cfg = tiny_config(method, data, tmp_path / "runs")
    run_dir = tmp_path / "runs" / method
    with pytest.raises(DatasetError, match=rf"no readable images under {data} \(6 files tried; see .*skipped.txt\)"):
        pretrain(cfg)
    assert len((run_dir / "skipped.txt").read_text().splitlines()) == 6
    assert (run_dir / "FAILED.txt").exists() and not (run_dir / "checkpoints").exists()
    code = main(["pretrain", "--config", str(save_config(cfg, tmp_path / "cfg.yaml"))])
    assert code == 2 and _error_line(capsys).startswith(f"error: no readable images under {data} (6 files tried")
    outcome("image", f"pretrain ({method}) on a folder where every image is unreadable",
            "exit 2 at start-up: 'no readable images under DIR (6 files tried; see skipped.txt)'")


def _photo_folder(root: Path, n_good: int, n_bad: int) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"img_{i:03d}.png")
    for i in range(n_bad):
        (root / f"img_{i:03d}_bad.jpg").write_bytes(b"\xff\xd8 truncated")
    return root


def test_bad_images_known_from_the_prior_build_are_decided_at_start_up(outcome, tmp_path):
    one_bad = _photo_folder(tmp_path / "one_bad", 42, 1)
    run_dir = pretrain(tiny_config("r2o", one_bad, tmp_path / "a", {"train": {"max_steps": 3}}))
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 3  # 1 in 43 is within data.max_bad_images
    assert [line.split("\t")[0] for line in (run_dir / "skipped.txt").read_text().splitlines()] == \
        [str(one_bad / "img_000_bad.jpg")]
    many_bad = _photo_folder(tmp_path / "many_bad", 37, 6)
    with pytest.raises(TooManyBadImagesError, match=r"6 of 43 images are unreadable.*raise data.max_bad_images"):
        pretrain(tiny_config("r2o", many_bad, tmp_path / "b", {"train": {"max_steps": 3}}))
    assert latest_checkpoint(tmp_path / "b" / "r2o") is None  # refused before step 1: nothing was trained
    outcome("image", "1 (then 6) unreadable of 43 images, R2O with a SLIC prior",
            "1: trained, listed; 6 > data.max_bad_images=5: refused at start-up naming the setting")


def test_a_run_stopped_by_bad_images_mid_run_keeps_its_steps(outcome, scenes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(scenes / "images", data)
    (data / "zz_broken.png").write_bytes(b"")  # sorted last: the start-up probe reads a good file first
    cfg = tiny_config("byol", data, tmp_path, {"train": {"max_steps": 40, "checkpoint_every": 1000},
                                               "data": {"max_bad_fraction": 0.0, "max_bad_images": 0}})
    with pytest.raises(TooManyBadImagesError):
        pretrain(cfg)
    done = max(losses_by_step(tmp_path / "byol"), default=0)
    ckpt = latest_checkpoint(tmp_path / "byol")
    assert done > 0, "the broken file came up in the first batch; the test needs it later"
    assert ckpt is not None and load_checkpoint(ckpt)["step"] == done  # every finished step is kept
    outcome("image", "an unreadable image met mid-run beyond the limit", f"stops with a checkpoint of the {done} steps done")


def test_a_run_that_fails_before_training_leaves_no_folder(outcome, scenes, tmp_path):
    cfg = tiny_config("byol", scenes / "images", tmp_path, {"train": {"precision": "fp16"}})  # fp16 needs CUDA
    with pytest.raises(ConfigError, match="fp16"):
        pretrain(cfg)
    assert not (tmp_path / "byol").exists()
    outcome("fault", "a run that fails during set-up", "no run folder left behind")


@pytest.mark.parametrize("key", ["train.out_dir", "data.prior_cache"])
def test_read_only_output_folders_are_one_line(outcome, key, scenes, tmp_path, capsys):
    with read_only_folder(tmp_path / "ro") as ro:
        section, name = key.split(".")
        cfg = tiny_config("r2o", scenes / "images", tmp_path / "runs", {section: {name: str(ro / "x")}})
        config = save_config(cfg, tmp_path / "cfg.yaml")
        code = main(["pretrain", "--config", str(config)])
        line = _error_line(capsys)
    assert code == 2 and line.startswith(f"error: cannot write {key}={ro / 'x'}:") and f"set {key}" in line, line
    outcome("config", f"{key} on a read-only folder", "exit 2 at start-up: cannot write KEY=DIR: reason")


def test_checkpoints_and_exports_follow_the_umask(outcome, scenes, tmp_path):
    old = os.umask(0o022)
    try:
        run_dir = pretrain(tiny_config("byol", scenes / "images", tmp_path, {"train": {"max_steps": 1}}))
        assert main(["export", "--checkpoint", str(run_dir), "--to", "torchvision", "--out",
                     str(tmp_path / "r18.pth")]) == 0
    finally:
        os.umask(old)
    for path in (latest_checkpoint(run_dir), tmp_path / "r18.pth"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, (path, oct(path.stat().st_mode))
    outcome("fault", "umask 022", "checkpoints and exports are 0644 (were 0600)")


def test_print_config_prints_the_resolved_config_and_touches_nothing(scenes, tmp_path, capsys, monkeypatch):
    from discorep.engine.config import Config
    from discorep.engine.configio import load_config

    monkeypatch.chdir(tmp_path)  # away from the repository: the bundled configs are found anyway
    for name in ("r2o_cpu_demo.yaml", "configs/r2o_cpu_demo.yaml"):
        assert main(["pretrain", "--config", name, "train.batch_size=3", "--print-config"]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        bundled = Path(__file__).parents[2] / "configs" / "r2o_cpu_demo.yaml"
        assert printed == to_dict(load_config(Config, bundled, ["train.batch_size=3"]))
        assert printed["train"]["batch_size"] == 3 and printed["method"]["name"] == "r2o"
    assert list(tmp_path.iterdir()) == []  # no run folder, no prior cache, no data listing
    assert not torch.distributed.is_initialized()


def test_a_run_folder_is_a_checkpoint_everywhere(outcome, trained, scenes, tmp_path, capsys):
    latest = latest_checkpoint(trained)
    assert latest.name == "step_00000002.pt"
    assert main(["discover", "--checkpoint", str(trained), "--images", str(scenes / "images"), "--out",
                 str(tmp_path / "d"), "--k", "2", "--size", "64", "--features", "c4"]) == 0
    assert json.loads((tmp_path / "d" / "discover.json").read_text())["checkpoint"] == str(latest)
    assert main(["eval", "objects", "--checkpoint", str(trained / "checkpoints"), "--coco",
                 str(scenes / "annotations.json"), "--images", str(scenes / "images"), "--size", "64",
                 "--features", "c4", "--k", "2", "--out", str(tmp_path / "o.json")]) == 0
    assert main(["export", "--checkpoint", str(trained), "--to", "timm", "--out", str(tmp_path / "t.pth")]) == 0
    exported = torch.load(tmp_path / "t.pth", weights_only=True)
    weights = load_checkpoint(latest)["method"]
    assert torch.equal(exported["conv1.weight"], weights["online.encoder.backbone.conv1.weight"])
    capsys.readouterr()
    missing = trained / "checkpoints" / "step_00000240.pt"
    assert main(["discover", "--checkpoint", str(missing), "--images", str(scenes / "images"), "--out",
                 str(tmp_path / "d2")]) == 2
    line = _error_line(capsys)
    assert "no such file" in line and "step_00000001.pt, step_00000002.pt" in line and f"run folder {trained}" in line
    outcome("checkpoint", "--checkpoint RUN_FOLDER (discover, eval, export) and a step that does not exist",
            "the latest checkpoint is used; a missing one lists those that exist")


def test_export_of_the_random_baseline(outcome, tmp_path, capsys):
    from torchvision.models import resnet18

    from discorep.eval.backbone import load_model

    assert main(["export", "--checkpoint", "random:resnet18", "--to", "torchvision", "--out",
                 str(tmp_path / "r.pth")]) == 0
    assert "all-zero placeholder" in capsys.readouterr().out  # the head to replace is named
    model = resnet18()
    model.load_state_dict(torch.load(tmp_path / "r.pth", weights_only=True), strict=True)
    baseline = load_model("random:resnet18").encoder.backbone.state_dict()
    assert torch.equal(model.layer3[0].conv1.weight, baseline["layer3.0.conv1.weight"])  # the evaluated baseline
    assert torch.count_nonzero(model.fc.weight) == 0
    outcome("checkpoint", "export --checkpoint random:resnet18", "writes the baseline's weights; notes the zero fc")


def test_a_run_that_logged_steps_but_no_checkpoint_is_kept_and_marked(outcome, scenes, tmp_path, monkeypatch):
    from discorep.engine.train import NonFiniteLossError
    from discorep.methods.byol import BYOL
    from tests.reliability.test_training_inputs import _nan_after

    monkeypatch.setattr(BYOL, "forward", _nan_after(BYOL, 3))
    cfg = tiny_config("byol", scenes / "images", tmp_path, {"train": {"max_steps": 6, "checkpoint_every": 1000}})
    with pytest.raises(NonFiniteLossError, match="none yet"):
        pretrain(cfg)
    run_dir = tmp_path / "byol"
    assert sorted(losses_by_step(run_dir)) == [1, 2, 3]  # the logged steps are not deleted
    assert "non-finite loss" in (run_dir / "FAILED.txt").read_text()
    outcome("fault", "a run that fails after logging steps, before its first checkpoint",
            "folder kept with FAILED.txt naming the error (logs never deleted)")


def test_resume_takes_a_run_folder_and_a_missing_file_lists_what_exists(outcome, scenes, tmp_path):
    from discorep.checkpoint import CheckpointError

    run_dir = pretrain(tiny_config("byol", scenes / "images", tmp_path, {"train": {"max_steps": 2}}))
    longer = tiny_config("byol", scenes / "images", tmp_path, {"train": {"max_steps": 3}})
    with pytest.raises(CheckpointError, match=r"--resume .*step_00000009.pt: no such file; .* holds step_00000002.pt"):
        pretrain(longer, resume=str(run_dir / "checkpoints" / "step_00000009.pt"))
    pretrain(longer, resume=str(run_dir))  # the folder = its latest checkpoint
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 3 and sorted(losses_by_step(run_dir)) == [1, 2, 3]
    outcome("checkpoint", "--resume RUN_FOLDER / --resume a step that does not exist",
            "resumes from the latest; a missing one lists the checkpoints that exist")
