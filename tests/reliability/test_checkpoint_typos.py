"""A mistyped `--checkpoint` inside a run folder names the run folder to pass (issue 27)."""

from __future__ import annotations

import pytest

from discorep.cli import main
from discorep.errors import CheckpointError
from discorep.runs import resolve_checkpoint


@pytest.fixture
def run(tmp_path, monkeypatch):
    """runs/mine with two checkpoints (names only: resolving never opens them), as the cwd's runs/."""
    folder = tmp_path / "runs" / "mine"
    (folder / "checkpoints").mkdir(parents=True)
    for step in (1, 2):
        (folder / "checkpoints" / f"step_{step:08d}.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return folder


TYPO = ["--checkpoint", "runs/mine/checkpoint"]  # a typo of runs/mine/checkpoints


@pytest.mark.parametrize("command", [
    ["discover", *TYPO, "--images", "imgs", "--out", "o"],
    ["eval", "knn", *TYPO, "--train", "imgs", "--val", "imgs"],
    ["export", *TYPO, "--to", "timm", "--out", "o.pth"],
])
def test_a_typo_inside_a_run_folder_names_the_run_folder(outcome, run, command, capsys):
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: --checkpoint runs/mine/checkpoint: no such file;"), err
    assert "pass --checkpoint runs/mine for its latest" in err and "step_00000002.pt" in err
    assert "no checkpoints found near it" not in err
    outcome("checkpoint", f"{command[0]} --checkpoint runs/mine/checkpoint (a typo of checkpoints/)",
            "exit 2 naming the run folder runs/mine to pass")


def test_the_nearest_run_folder_is_named_and_a_run_without_checkpoints_says_so(run, tmp_path):
    with pytest.raises(CheckpointError, match=r"runs/mine is a run folder .*pass --resume runs/mine for"):
        resolve_checkpoint("runs/mine/chekpoints/step_00000002.pt", "--resume")
    nested = run / "eval" / "checkpoints"  # a run folder inside a run folder: the nearer one is named
    nested.mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"runs/mine/eval is a run folder without a checkpoint yet"):
        resolve_checkpoint("runs/mine/eval/checkpoint")
    with pytest.raises(CheckpointError, match="run folders with checkpoints under runs: runs/mine"):
        resolve_checkpoint("runs/mien")  # a typo of the run's name: the run folders beside it, as before
