"""discorep.checkpoint: atomic saves, safe loads, layout, pruning, RNG state round trip."""

from __future__ import annotations

import errno
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from discorep.checkpoint import (
    CheckpointError,
    checkpoint_path,
    get_rng_state,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
)


def _draws() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.normal(),
            torch.rand(4).tolist())


def _state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.arange(6.0).reshape(2, 3) * step}, "cfg": {"lr": 0.1, "x": [1, 2]}}


def test_round_trip_with_rng_state(tmp_path: Path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.normal()
    state = {**_state(5), "rng": get_rng_state()}
    expected = _draws()
    path = save_checkpoint(state, checkpoint_path(tmp_path, 5))
    assert path == tmp_path / "checkpoints" / "step_00000005.pt"
    _draws()  # move every generator on
    loaded = load_checkpoint(path)
    assert loaded["step"] == 5 and loaded["cfg"] == {"lr": 0.1, "x": [1, 2]}
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    set_rng_state(loaded["rng"])
    assert _draws() == expected


def test_latest_and_prune_ignore_temp_files(outcome, tmp_path: Path):
    assert latest_checkpoint(tmp_path) is None
    for step in (3, 10, 7, 12):
        save_checkpoint(_state(step), checkpoint_path(tmp_path, step))
    ckpt_dir = tmp_path / "checkpoints"
    (ckpt_dir / ".step_00000099.pt.abc.tmp").write_bytes(b"partial")
    (ckpt_dir / "notes.txt").write_text("x")
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 12)
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == [".step_00000099.pt.abc.tmp", "step_00000003.pt", "step_00000007.pt"]
    assert sorted(p.name for p in ckpt_dir.glob("step_*.pt")) == ["step_00000010.pt", "step_00000012.pt"]
    assert (ckpt_dir / "notes.txt").exists()
    with pytest.raises(ValueError, match="keep_last"):
        prune_checkpoints(tmp_path, keep_last=0)
    outcome("checkpoint", "temp file of an interrupted save beside complete ones", "ignored by --resume auto, deleted by the next save")


def test_missing_and_truncated_files(outcome, tmp_path: Path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    path = save_checkpoint(_state(1), tmp_path / "full.pt")
    data = path.read_bytes()
    for n in (0, 10, len(data) // 2, len(data) - 5):
        cut = tmp_path / f"cut{n}.pt"
        cut.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="truncated or corrupted"):
            load_checkpoint(cut)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(2000))
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    outcome("checkpoint", "missing, truncated, corrupted file", "CheckpointError: delete it to resume from an earlier one")


class _Evil:
    """Unpickling this would create a file: the loader must refuse before calling it."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_malicious_pickles_are_not_executed(outcome, tmp_path: Path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"model": _Evil(str(marker))}, protocol=2))
    zipped = tmp_path / "zipped.pt"
    torch.save({"model": _Evil(str(marker))}, zipped)
    assert not marker.exists()
    for path in (raw, zipped):
        with pytest.raises(CheckpointError, match="contains code; refusing to execute it"):
            load_checkpoint(path)
    assert not marker.exists()
    outcome("checkpoint", "pickle with code (raw and zipped)", "refused; the code never runs (weights_only)")


def test_non_dict_checkpoint_rejected(outcome, tmp_path: Path):
    path = tmp_path / "t.pt"
    torch.save(torch.zeros(2), path)
    with pytest.raises(CheckpointError, match="not a discorep checkpoint"):
        load_checkpoint(path)
    outcome("checkpoint", "foreign file (a bare tensor)", "CheckpointError: not a discorep checkpoint")


@pytest.mark.parametrize("fail_in", ["write", "fsync"])
def test_enospc_keeps_previous_checkpoint(outcome, tmp_path: Path, monkeypatch, fail_in: str):
    old = save_checkpoint(_state(1), checkpoint_path(tmp_path, 1))
    old_bytes = old.read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if fail_in == "fsync":
        monkeypatch.setattr(os, "fsync", no_space)
    else:
        monkeypatch.setattr("discorep.fileio.os.fdopen",
                            lambda fd, mode: _FailingFile(fd))
    for target in (checkpoint_path(tmp_path, 2), old):  # a new step, and overwriting the same file
        with pytest.raises(CheckpointError) as info:
            save_checkpoint(_state(2), target)
        msg = str(info.value)
        assert "No space left" in msg and f"previous checkpoint {old} is intact" in msg
        assert old.read_bytes() == old_bytes
        assert sorted(p.name for p in old.parent.iterdir()) == ["step_00000001.pt"]  # no temp file left
    monkeypatch.undo()
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 1
    outcome("fault", f"disk full during {fail_in}", "CheckpointError; previous checkpoint intact, no temp file")


_REAL_FDOPEN = os.fdopen  # captured before the test patches os.fdopen


class _FailingFile:
    """File object whose write fails like a full disk after writing part of the data."""

    def __init__(self, fd: int) -> None:
        self._f = _REAL_FDOPEN(fd, "wb")

    def write(self, data) -> int:
        self._f.write(bytes(data)[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def test_enospc_without_previous_checkpoint_says_so(outcome, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(CheckpointError, match="no earlier checkpoint existed"):
        save_checkpoint(_state(1), checkpoint_path(tmp_path, 1))
    assert list((tmp_path / "checkpoints").iterdir()) == []
    outcome("fault", "disk full on the first checkpoint", "CheckpointError says nothing was overwritten")


def test_unserialisable_state_fails_before_touching_disk(outcome, tmp_path: Path):
    with pytest.raises(CheckpointError, match="cannot serialise"):
        save_checkpoint({"f": lambda: 1}, tmp_path / "c.pt")
    assert not tmp_path.joinpath("c.pt").exists()
    outcome("checkpoint", "unserialisable state", "CheckpointError before the disk is touched")


def test_malformed_rng_state(outcome):
    with pytest.raises(CheckpointError, match="RNG state"):
        set_rng_state({"python": {}})
    outcome("checkpoint", "malformed RNG state", "CheckpointError")
