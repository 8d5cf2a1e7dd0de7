"""The README's commands, as written, run in order after the demo (issue 13), at a tiny size.

Each `.venv/bin/discorep ...` line of the README is taken from the file itself (so an edit that breaks
one fails here), placeholders are filled with small local data, images are shrunk (`--size 64`) and
training is cut to a step or two. Lines that need outside data or hardware (ImageNet, 8 GPUs, the
paper-scale configs, the 39-minute study) are listed in SKIPPED, so a new line is run by default.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from discorep.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
SKIPPED = ("data.root=/data/imagenet", "configs/r2o.yaml --resume auto", "discorep study ")
TINY_TRAIN = ["train.max_steps=1", "train.batch_size=4", "data.num_workers=0", "train.progress=false",
              "data.root=data/demo/scenes_val/images", "views.size=64", "views.spanning_size=64", "views.raw_size=64",
              "data.prior_size=64"]


def readme_commands() -> list[str]:
    """Every `.venv/bin/discorep` command of the README's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    commands = [line.split("#")[0].strip() for line in text.splitlines()]
    return [c for c in commands if c.startswith(".venv/bin/discorep ")]


def _expand(command: str, classes: Path) -> list[list[str]]:
    """argv lists for one README command: placeholders filled, alternatives (a|b) expanded, sizes shrunk."""
    fills = {"CKPT": "runs/r2o_cpu_demo", "ANN.json": "data/demo/scenes_val/annotations.json",
             "TRAIN_DIR": str(classes), "VAL_DIR": str(classes), "SHARDS": "out/shards"}
    args = shlex.split(command.replace("|", " | "))[1:]
    args = [fills.get(a, a) for a in args]
    args = ["data/demo/scenes_val/images" if a == "DIR" else a for a in args]
    if "|" in args:  # --to torchvision|timm|detectron2|mmseg: one command per choice
        i = args.index("|") - 1
        j = max(k for k, a in enumerate(args) if a == "|") + 1
        return [_tiny([*args[:i], choice, *args[j + 1:]]) for choice in args[i:j + 1:2]]
    return [_tiny(args)]


def _tiny(args: list[str]) -> list[str]:
    if args[0] == "export":
        to = args[args.index("--to") + 1]
        args[args.index("--out") + 1] = f"out/export_{to}.{'pkl' if to == 'detectron2' else 'pth'}"
    if args[0] in ("discover", "eval"):
        if "--size" in args:
            args[args.index("--size") + 1] = "64"
        else:
            args += ["--size", "64"]
        if "linear" in args or "linear-seg" in args:
            args += ["--epochs", "2"]
    if args[0] == "transfer":  # the cpu preset, shrunk to two iterations at 64 px
        args += ["--iters", "2", "--size", "64", "solver.batch_size=2", "solver.workers=0", "eval_batch_size=2"]
    if args[0] == "pretrain" and "--config" not in args:  # --resume RUN: its own config; one more step
        args += ["train.max_steps=2"]
    elif args[0] == "pretrain" and "--print-config" not in args:
        args += TINY_TRAIN
    return args


@pytest.mark.slow
def test_readme_commands_run_in_order_after_the_demo(tmp_path, monkeypatch, capsys):
    from discorep.engine.config import Config
    from discorep.engine.configio import load_config
    from discorep.configfiles import find_config
    from discorep.engine.train import pretrain

    monkeypatch.chdir(tmp_path)  # a fresh directory: configs come from the package
    assert main(["make-data", "--out", "data/demo"]) == 0
    # What `make demo` leaves, shrunk: runs/r2o_cpu_demo with a checkpoint whose step the README must not name.
    demo = load_config(Config, find_config("r2o_contrastive_cpu_demo.yaml"), [*TINY_TRAIN, "train.max_steps=2"])
    pretrain(demo, resume="auto")
    classes = tmp_path / "classes"
    for label in ("a", "b"):
        (classes / label).mkdir(parents=True)
        for i in range(3):
            (classes / label / f"{i}.png").write_bytes(
                (tmp_path / "data/demo/scenes_val/images" / f"scene_{3 * (label == 'b') + i:06d}.png").read_bytes())
    ran = []
    for command in readme_commands():
        if any(s in command for s in SKIPPED):
            continue
        for argv in _expand(command, classes):
            try:
                code = main(argv)
            except SystemExit as exit_:  # --help
                code = exit_.code
            out = capsys.readouterr()
            assert code == 0, (command, argv, out.err[-2000:])
            ran.append(argv[0] if argv[0] != "eval" else f"eval {argv[1]}")
    assert {"pretrain", "discover", "eval objects", "eval video", "eval knn", "eval linear", "eval foreground",
            "eval linear-seg", "eval retrieval", "eval overcluster", "eval corloc",
            "export", "make-data", "shard", "transfer", "--help"} <= set(ran), ran
    assert ran.count("transfer") == 2 and (tmp_path / "out/detect.json").exists() and (tmp_path / "out/segment.json").exists()
    assert ran.count("export") == 4 and ran.count("discover") == 2
    assert (tmp_path / "out/photos/discover.json").exists() and (tmp_path / "out/random/discover.json").exists()
    assert (tmp_path / "runs/r2o_laptop/checkpoints").is_dir()  # the README's own run, beside the demo's
    assert (tmp_path / "runs/quick/checkpoints/step_00000002.pt").is_file()  # the quick try, resumed by folder
