"""How a `discorep transfer` run stops and continues: a non-finite loss stops it before anything is scored;
Ctrl-C from a terminal writes a checkpoint and says how to continue (exit 130, one line); `--resume auto`
continues from it; a work dir holding a run's checkpoints is not overwritten by a fresh start, nor
resumed under other settings; a finished run is read back, not retrained.

The loop is shared by both tasks: the in-process cases use `segment` (an FCN: ~1 s an iteration on
64 px images), the terminal case `detect` (Faster R-CNN, through `python -m discorep.cli`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from discorep import cli
from discorep.apps.demodata.scenes import make_scenes
from discorep.errors import Interrupted, NonFiniteLossError
from discorep.transfer import Inputs, load_transfer_config, run_transfer
from discorep.transfer import loop as loop_mod
from discorep.transfer import segment as segment_mod

ROOT = Path(__file__).resolve().parents[2]
ITERS = 4
OVERRIDES = ["solver.batch_size=2", "solver.workers=0", "solver.checkpoint_every=1", "eval_batch_size=1",
             "model.norm=bn"]
# The CLI's flags for the settings the in-process runs set as overrides: both give the same run folder.
SEGMENT_FLAGS = ["--baseline", "none", "--device", "cpu", "--iters", str(ITERS), "--size", "64"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """8 training and 4 validation scenes of 64 px (COCO instances json + images/)."""
    root = tmp_path_factory.mktemp("transfer_stops")
    return (make_scenes(root / "train", 8, seed=1, image_size=(64, 64)),
            make_scenes(root / "val", 4, seed=2, image_size=(64, 64)))


def _segment_cfg(extra: tuple[str, ...] = ()):
    return load_transfer_config("segment", "cpu", [*OVERRIDES, *extra, f"solver.iters={ITERS}", "input.crop_size=64",
                                                   "device=cpu"])


def _segment_args(data, work: Path, out: Path, *extra: str) -> list[str]:
    """The CLI's arguments; `extra` flags before the KEY=VALUE overrides (argparse takes them as one run)."""
    train, val = data
    flags, overrides = [a for a in extra if "=" not in a], [a for a in extra if "=" in a]
    return ["transfer", "segment", "--checkpoint", "random:resnet18", "--train", str(train), "--val", str(val),
            "--work-dir", str(work), "--out", str(out), *SEGMENT_FLAGS, *flags, *OVERRIDES, *overrides]


def _fail_at_call(monkeypatch, n: int, make_failure) -> None:
    """segment's loss function, with the `n`-th call (iteration n, 1-based) replaced by `make_failure(loss)`."""
    original = segment_mod.loss_fn
    calls = []

    def loss_fn(device):
        step = original(device)

        def wrapped(model, batch):
            calls.append(1)
            total, terms = step(model, batch)
            if len(calls) == n:
                return make_failure(total, terms)
            return total, terms
        return wrapped

    monkeypatch.setattr(segment_mod, "loss_fn", loss_fn)


def _checkpoints(work: Path) -> list[str]:
    return sorted(str(p.relative_to(work)) for p in work.glob("*/checkpoints/iter_*.pt"))


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------------------ (a) non-finite


def test_nonfinite_loss_stops_before_scoring(data, tmp_path, monkeypatch):
    _fail_at_call(monkeypatch, 2, lambda total, terms: (total * float("inf"), {"ce": total * float("inf")}))
    out, work = tmp_path / "result.json", tmp_path / "work"
    with pytest.raises(NonFiniteLossError) as err:
        run_transfer("segment", _segment_cfg(), "random:resnet18", Inputs(*map(str, data)), seeds=1, out=out,
                     work_dir=work, resume=False, baseline=False, progress=False)
    message = str(err.value)
    # The iteration whose loss was inf (1-based, as the progress bar counts), and the checkpoint before it.
    assert re.search(r"non-finite loss at iteration 2 \(", message), message
    assert "ce=inf" in message and "iter_00000001.pt" in message and "\n" not in message
    assert not out.exists(), "a stopped run must not write a result (never a silent AP or mIoU of 0)"
    assert not list(work.glob("*/scores.json"))
    assert _checkpoints(work) == [f"{next(work.iterdir()).name}/checkpoints/iter_00000001.pt"]


# ------------------------------------------------------------------- (c, d, e) an interrupted run, in process


@pytest.fixture(scope="module")
def interrupted(data, tmp_path_factory):
    """A segment run stopped by Ctrl-C in its 3rd iteration (2 done): (work dir, its run folder, out path)."""
    work = tmp_path_factory.mktemp("interrupted") / "work"
    out = work.parent / "result.json"
    mp = pytest.MonkeyPatch()
    try:
        def ctrl_c(total, terms):
            raise KeyboardInterrupt
        _fail_at_call(mp, 3, ctrl_c)
        with pytest.raises(Interrupted) as err:
            run_transfer("segment", _segment_cfg(), "random:resnet18", Inputs(*map(str, data)), seeds=1, out=out,
                         work_dir=work, resume=False, baseline=False, progress=False)
    finally:
        mp.undo()
    assert err.value.exit_status == 130
    assert "stopped at iteration 2 of 4" in str(err.value) and "--resume auto" in str(err.value)
    (run_dir,) = [p for p in work.iterdir() if p.is_dir()]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["iter_00000001.pt", "iter_00000002.pt"]
    return work, run_dir, out


def _snapshot(work: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(work)): (p.stat().st_size, p.stat().st_mtime_ns) for p in work.rglob("*") if p.is_file()}


def test_fresh_start_into_a_work_dir_with_checkpoints_is_refused(data, interrupted, capsys):
    work, run_dir, out = interrupted
    before = _snapshot(work)
    assert cli.main(_segment_args(data, work, out)) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert str(run_dir) in lines[0] and "holds checkpoints of an earlier run" in lines[0]
    assert "--resume auto" in lines[0]
    assert _snapshot(work) == before and not out.exists()


def test_resume_under_changed_settings_is_refused_naming_the_key(data, interrupted, capsys):
    work, run_dir, out = interrupted
    before = _snapshot(work)
    # solver.workers may differ on resume (it changes neither the model nor the data order): not named.
    assert cli.main(_segment_args(data, work, out, "--resume", "auto", "solver.base_lr=0.05",
                                  "solver.workers=1")) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert "solver.base_lr" in lines[0] and str(run_dir) in lines[0], lines[0]
    named = re.search(r"with other (.*?);", lines[0])
    assert named and named.group(1) == "solver.base_lr", lines[0]
    assert _snapshot(work) == before, "a refused resume must train nothing and write nothing"


def _linked_copy(src: Path, dst: Path) -> None:
    """The work dir with its (large) checkpoints hard-linked: the resume writes new files, never into these."""
    shutil.copytree(src, dst, copy_function=os.link)


def test_resume_then_a_finished_run_is_read_not_retrained(data, interrupted, tmp_path, monkeypatch, capsys):
    src, _, _ = interrupted
    work, out = tmp_path / "work", tmp_path / "result.json"
    _linked_copy(src, work)
    fits = []
    original_fit = loop_mod.Fitter.fit

    def counting_fit(self, *args, **kwargs):
        fits.append(1)
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(loop_mod.Fitter, "fit", counting_fit)
    assert cli.main(_segment_args(data, work, out, "--resume", "auto")) == 0
    first = json.loads(out.read_text())
    run = first["settings"]["runs"][0]
    assert (fits, run["resumed_from"], run["iters"]) == ([1], 2, ITERS)
    record = json.loads((Path(run["run_dir"]) / "scores.json").read_text())
    assert record["scores"] == {k: v for k, v in first.items() if k not in ("settings", "baseline")}

    # The same settings, data and seed again (no --resume needed): read from scores.json, nothing built.
    built = []
    monkeypatch.setattr(segment_mod, "build_model", lambda *a, **k: built.append(1) or pytest.fail("rebuilt"))
    out.unlink()
    assert cli.main(_segment_args(data, work, out)) == 0
    assert fits == [1] and built == []
    second = json.loads(out.read_text())
    assert second == first
    assert "error:" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------- (b) Ctrl-C, terminal


def _detect_command(train: Path, val: Path, work: Path, out: Path, *extra: str, workers: int = 0) -> list[str]:
    """Faster R-CNN (its box head dominates: ~2 s an iteration on 2 cores), 3 iterations, a checkpoint each."""
    return [sys.executable, "-m", "discorep.cli", "transfer", "detect", "--checkpoint", "random:resnet18",
            "--train", str(train), "--val", str(val), "--work-dir", str(work), "--out", str(out),
            "--baseline", "none", "--device", "cpu", "--iters", "3", "--size", "64", "--norm", "frozen",
            "--no-masks", "--trainable-layers", "2", *extra, "solver.batch_size=2",
            "solver.checkpoint_every=1", "eval_batch_size=2", f"solver.workers={workers}"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DISCOREP_DEBUG")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}


# SIGTERM to the whole group with a loader worker: a scheduler's scancel / preemption signals every
# process; the worker must leave it to the main process, which writes its checkpoint (exit 143).
@pytest.mark.slow  # two CLI processes (~40 s on 2 cores): the in-process tests above cover the loop's logic
@pytest.mark.parametrize("sig,workers", [(signal.SIGINT, 0), (signal.SIGTERM, 1)])
def test_ctrl_c_from_a_terminal_then_resume_auto(data, tmp_path, sig, workers):
    work, out = tmp_path / "work", tmp_path / "result.json"
    command = partial(_detect_command, data[0], make_scenes(tmp_path / "val", 2, seed=3, image_size=(64, 64)),
                      workers=workers)
    # As a terminal's Ctrl-C: SIGINT at its default (so Python raises KeyboardInterrupt), sent to the group.
    proc = subprocess.Popen(command(work, out), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 240
        while not list(work.glob("*/checkpoints/iter_00000001.pt")):  # 1 of 3 iterations done: 2 to go
            assert proc.poll() is None, f"ended before it was interrupted: {proc.communicate()}"
            assert time.time() < deadline, "no checkpoint after 240 s"
            time.sleep(0.05)
        os.killpg(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr, stderr
    lines = _error_lines(stderr)
    assert len(lines) == 1, stderr
    found = re.fullmatch(r"error: transfer stopped at iteration (\d+) of 3; checkpoint (\S+) written; rerun the "
                         r"same command with --resume auto to continue", lines[0])
    assert found, lines[0]
    stopped, path = int(found.group(1)), Path(found.group(2))
    assert 1 <= stopped < 3 and path.name == f"iter_{stopped:08d}.pt" and path.is_file()
    assert not out.exists() and not list(work.glob("*/scores.json"))

    done = subprocess.run(command(work, out, "--resume", "auto"), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _error_lines(done.stderr) == []
    result = json.loads(out.read_text())
    run = result["settings"]["runs"][0]
    assert (run["resumed_from"], run["iters"]) == (stopped, 3)
    assert json.loads((Path(run["run_dir"]) / "scores.json").read_text())["resumed_from"] == stopped
    assert set(result["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} and "segm" not in result
