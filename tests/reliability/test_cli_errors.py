"""Every mistake a hurried user makes is one `error:` line, found before any heavy work (issue 13, 1-13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from discorep.cli import build_parser, main
from tests.reliability.readonly import read_only_folder


def _one_line_error(capsys, code: int, expected: int = 2) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == expected and "Traceback" not in err, err
    assert lines and lines[-1].startswith("error:"), err
    return lines[-1]


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


BAD_ARGUMENTS = {  # case -> (arguments, fragment of the one error line)
    "k abc": (["discover", "--checkpoint", "random:resnet18", "--images", "{photos}", "--out", "{tmp}/o", "--k", "abc"],
              "expected comma-separated positive integers"),
    "k 1,,2": (["discover", "--checkpoint", "random:resnet18", "--images", "{photos}", "--out", "{tmp}/o", "--k", "1,,2"],
               "got '1,,2'"),
    "size 8": (["discover", "--checkpoint", "random:resnet18", "--images", "{photos}", "--out", "{tmp}/o", "--size", "8"],
               "must be at least 32"),
    "knn k 0": (["eval", "knn", "--checkpoint", "random:resnet18", "--train", "{photos}", "--val", "{photos}", "--k", "0"],
                "--k: must be a positive integer"),
    "linear epochs 0": (["eval", "linear", "--checkpoint", "random:resnet18", "--train", "{photos}", "--val", "{photos}",
                         "--epochs", "0"], "--epochs: must be a positive integer"),
    "linear lr -1": (["eval", "linear", "--checkpoint", "random:resnet18", "--train", "{photos}", "--val", "{photos}",
                      "--lr", "-1"], "--lr: must be a positive"),
    "coco is an image": (["eval", "objects", "--checkpoint", "random:resnet18", "--coco", "{photos}/p0.png",
                          "--images", "{photos}"], "not a COCO json file"),
    "out is a file": (["discover", "--checkpoint", "random:resnet18", "--images", "{photos}", "--out", "{photos}/p1.png"],
                      "it is a file, not a folder"),
    "missing checkpoint": (["discover", "--checkpoint", "runs/nope/checkpoints/step_00000240.pt", "--images", "{photos}",
                            "--out", "{tmp}/o"], "no such file"),
    "base_lr -1": (["pretrain", "--config", "byol_cpu_demo.yaml", "optim.base_lr=-1", "--print-config"],
                   "optim.base_lr must be >= 0"),
    "unknown config": (["pretrain", "--config", "r2o_cpu_demo.yml"], "bundled: byol.yaml"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_arguments_are_one_line_before_torch_is_loaded(outcome, case, photos, tmp_path):
    """Run in a fresh interpreter: the error comes before `torch` is imported (so in well under a second)."""
    args, fragment = BAD_ARGUMENTS[case]
    args = [a.format(photos=photos, tmp=tmp_path) for a in args]
    script = ("import sys\nfrom discorep.cli import main\ntry:\n    code = main(sys.argv[1:])\nfinally:\n"
              "    print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\nsys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert fragment in lines[0], lines[0]
    if case != "base_lr -1":
        assert proc.stdout.strip() == "torch not loaded", proc.stdout
    outcome("command", f"mistake: {case}", "exit 2, one line: " + lines[0].replace(str(tmp_path), "<tmp>")[:90])


def test_cuda_asked_without_a_gpu_is_one_line(outcome, photos, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["discover", "--checkpoint", "random:resnet18", "--images", str(photos), "--out",
                 str(tmp_path / "o"), "--device", "cuda"])
    line = _one_line_error(capsys, code)
    assert "no CUDA GPU is visible" in line and "--device cpu" in line
    from discorep.engine.configio import save_config
    from tests.helpers import tiny_config

    config = save_config(tiny_config("byol", photos, tmp_path / "runs"), tmp_path / "c.yaml")
    code = main(["pretrain", "--config", str(config), "train.device=cuda"])
    line = _one_line_error(capsys, code)
    assert "train.device=cuda but no CUDA GPU" in line
    assert not (tmp_path / "runs" / "byol").exists()  # refused before a run folder was made
    outcome("command", "--device cuda / train.device=cuda without a GPU", "exit 2, one line naming the fix")


def test_eval_out_that_cannot_be_written_is_refused_before_evaluating(outcome, tmp_path, capsys, monkeypatch):
    from discorep.apps.demodata.scenes import make_scenes
    import discorep.eval.objects as objects

    make_scenes(tmp_path / "scenes", 2, seed=5, image_size=(64, 64))
    monkeypatch.setattr(objects, "run", lambda **kw: pytest.fail("evaluated although --out cannot be written"))
    with read_only_folder(tmp_path / "ro") as ro:
        code = main(["eval", "objects", "--checkpoint", "random:resnet18", "--coco",
                     str(tmp_path / "scenes" / "annotations.json"), "--images", str(tmp_path / "scenes" / "images"),
                     "--out", str(ro / "objects.json")])
    line = _one_line_error(capsys, code)
    assert line.startswith(f"error: cannot write --out {ro / 'objects.json'}:"), line
    outcome("command", "eval objects --out in a read-only folder", "exit 2 before any feature is computed")


def test_discover_out_read_only_is_one_line(outcome, photos, tmp_path, capsys):
    with read_only_folder(tmp_path / "ro") as ro:
        code = main(["discover", "--checkpoint", "random:resnet18", "--images", str(photos), "--out", str(ro / "o")])
    line = _one_line_error(capsys, code)
    assert line.startswith(f"error: cannot write --out {ro / 'o'}:"), line
    outcome("command", "discover --out on a read-only folder", "exit 2: cannot write --out X: reason")


def _discover(photos, out, *extra):
    return main(["discover", "--checkpoint", "random:resnet18", "--images", str(photos), "--out", str(out),
                 "--k", "2,4", "--size", "64", "--features", "c4", "--batch-size", "1", *extra])


def _every_output_is_complete(out: Path) -> int:
    """All npz/png under `out` load (none half-written), no temp file is left; returns the npz count."""
    assert not [p for p in out.rglob(".*.tmp")], list(out.rglob(".*.tmp"))
    for npz in out.glob("*.npz"):
        assert np.load(npz)["labels_k2"].shape == (40, 48)
        Image.open(out / f"{npz.stem}.png").load()
    return len(list(out.glob("*.npz")))


def test_disk_full_part_way_keeps_complete_outputs_and_a_rerun_continues(outcome, photos, tmp_path, capsys,
                                                                         monkeypatch):
    import discorep.eval.discover as discover

    real_save, calls = discover._savez_fast, []

    def full_after_two(f, arrays):
        calls.append(1)
        if len(calls) == 3:
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(f, arrays)

    monkeypatch.setattr(discover, "_savez_fast", full_after_two)
    code = _discover(photos, tmp_path / "out")
    line = _one_line_error(capsys, code)
    assert "No space left on device" in line and "2 of 5 images done" in line and "rerun" in line, line
    assert _every_output_is_complete(tmp_path / "out") == 2
    monkeypatch.setattr(discover, "_savez_fast", real_save)
    assert _discover(photos, tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "discover.json").read_text())
    assert summary["kept_from_earlier_run"] == 2 and summary["written"] == 5 and summary["complete"]
    assert _every_output_is_complete(tmp_path / "out") == 5
    outcome("command", "disk full part-way through discover", "exit 2 'cannot write X: No space left'; "
            "2 complete outputs kept, no temp file; the rerun does the other 3")


def test_ctrl_c_during_discover_says_how_far_it_got_and_the_rerun_continues(outcome, photos, tmp_path, capsys,
                                                                           monkeypatch):
    import discorep.eval.discover as discover

    real_write, calls = discover._write_outputs, []

    def interrupted_at_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(discover, "_write_outputs", interrupted_at_the_fourth)
    code = _discover(photos, tmp_path / "out")
    line = _one_line_error(capsys, code, expected=130)
    assert line == f"error: interrupted; 3 of 5 images done in {tmp_path / 'out'}; rerun the same command to continue"
    monkeypatch.setattr(discover, "_write_outputs", real_write)
    assert _discover(photos, tmp_path / "out") == 0
    assert json.loads((tmp_path / "out" / "discover.json").read_text())["kept_from_earlier_run"] == 3
    # Other settings: the folder holds results they would not reproduce; refused, or moved aside with --overwrite.
    capsys.readouterr()
    code = _discover(photos, tmp_path / "out", "--seed", "1")
    assert "made with seed=0; this run has seed=1" in _one_line_error(capsys, code)
    assert _discover(photos, tmp_path / "out", "--seed", "1", "--overwrite") == 0
    assert json.loads((tmp_path / "out" / "discover.json").read_text())["kept_from_earlier_run"] == 0
    assert len(list(tmp_path.glob("out.old-*/*.npz"))) == 5  # the earlier results, kept
    outcome("command", "Ctrl-C during discover", "exit 130: 'interrupted; 3 of 5 images done, rerun'; rerun continues; "
            "other settings into that folder: exit 2 naming both, --overwrite moves it aside")


def test_an_unexpected_exception_is_one_line_naming_the_command(outcome, photos, tmp_path, capsys, monkeypatch):
    import discorep.eval.discover as discover

    def boom(**kwargs):
        raise RuntimeError("something deep\nwith a second line")

    monkeypatch.setattr(discover, "run_discover", boom)
    args = ["discover", "--checkpoint", "random:resnet18", "--images", str(photos), "--out", str(tmp_path / "o")]
    line = _one_line_error(capsys, main(args), expected=1)
    assert line == ("error: discorep discover failed: RuntimeError: something deep with a second line "
                    "(rerun with --debug for the traceback)")
    with pytest.raises(RuntimeError, match="something deep"):
        main(["--debug", *args])
    with pytest.raises(RuntimeError, match="something deep"):
        main([*args, "--debug"])
    monkeypatch.setenv("DISCOREP_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something deep"):
        main(args)
    outcome("command", "an unexpected exception inside a command", "exit 1, one line naming the command; "
            "the traceback with --debug or DISCOREP_DEBUG=1")


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_help_describes_every_option_and_shows_defaults():
    parser = build_parser()
    seen = 0
    for name, sub in _subparsers(parser):
        for action in sub._actions:
            if action.option_strings or action.dest == "overrides":
                assert action.help, f"discorep {name}: {action.option_strings or action.dest} has no help text"
                seen += 1
    assert seen > 80
    text = " ".join(dict(_subparsers(parser))["discover"].format_help().split())
    assert "k-means seed (per image: combined with its path) (default: 0)" in text
    assert "(default: 448)" in text and "(default: 1,2,4,8,16,32,64,128)" in text
