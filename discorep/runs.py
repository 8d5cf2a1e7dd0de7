"""Run-folder layout without torch: where checkpoints live, which is the latest, what `--checkpoint` means.

A run folder is ``<train.out_dir>/<train.name>/`` holding ``checkpoints/step_XXXXXXXX.pt``. Every
``--checkpoint`` accepts a checkpoint file, a run folder (= its latest checkpoint), the run's
``checkpoints/`` folder itself, or ``random:<arch>[:<seed>]``. This module imports neither torch nor
numpy so that the CLI can check such arguments before loading them (`discorep.checkpoint` re-exports it).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Optional

NAME_RE = re.compile(r"^step_(\d+)\.pt$")
RANK_STATE_RE = re.compile(r"^step_(\d+)\.rank\d+-of-\d+\.pt$")  # a rank's own part of a checkpoint


from discorep.errors import CheckpointError  # noqa: F401,E402 (re-export)


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """``run_dir/checkpoints/step_{step:08d}.pt``."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return Path(run_dir) / "checkpoints" / f"step_{int(step):08d}.pt"


def rank_state_path(checkpoint: str | Path, rank: int, world_size: int) -> Path:
    """Where rank `rank` of `world_size` keeps its own part of `checkpoint` (a method's per-rank state,
    e.g. Odin's segment store): ``step_XXXXXXXX.rank{r}-of-{W}.pt`` beside it, pruned with it."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.rank{rank}-of-{world_size}{path.suffix}")


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints in ``directory``, oldest first; temp files never match."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = NAME_RE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The checkpoint with the highest step in ``run_dir/checkpoints``, or None if there is none."""
    found = list_checkpoints(Path(run_dir) / "checkpoints")
    return found[-1][1] if found else None


def _names(found: list[tuple[int, Path]], limit: int = 5) -> str:
    names = [p.name for _, p in found]
    return ", ".join(names if len(names) <= limit else [names[0], "...", *names[-(limit - 2):]])


def _what_exists(path: Path, flag: str = "--checkpoint") -> str:
    """What a user who typed a missing `path` probably wants: the checkpoints that do exist nearby."""
    parent = path.parent
    found = list_checkpoints(parent)
    if found:
        run = parent.parent if parent.name == "checkpoints" else parent
        return f"{parent} holds {_names(found)}; pass the run folder {run} for its latest"
    run = _enclosing_run(path)
    if run is not None:  # a typo inside a run folder (runs/mine/checkpoint): the run folder is what to pass
        found = list_checkpoints(run / "checkpoints")
        if found:
            return (f"{run} is a run folder ({run / 'checkpoints'} holds {_names(found)}); "
                    f"pass {flag} {run} for its latest")
        return f"{run} is a run folder without a checkpoint yet; has the run saved one?"
    runs_root = parent.parent if parent.name == "checkpoints" else parent
    while not runs_root.is_dir() and runs_root != runs_root.parent:
        runs_root = runs_root.parent
    runs = sorted(d for d in runs_root.iterdir() if d.is_dir() and latest_checkpoint(d)) if runs_root.is_dir() else []
    if runs:
        shown = ", ".join(str(d) for d in runs[:5]) + (", ..." if len(runs) > 5 else "")
        return f"run folders with checkpoints under {runs_root}: {shown}"
    return "no checkpoints found near it; train one with `discorep pretrain` or use random:<arch> (e.g. random:resnet18)"


def _enclosing_run(path: Path) -> Optional[Path]:
    """The nearest folder above `path` that is a run folder (holds a ``checkpoints/`` folder), or None."""
    for folder in path.parents:
        if (folder / "checkpoints").is_dir():
            return folder
    return None


# Keys that may change on --resume without changing what is trained (`engine.resume`; here, torch-free,
# so that the CLI checks a resumed run folder's overrides before loading anything).
RESUME_SAFE_KEYS = ("train.max_steps", "train.progress", "train.log_every", "train.checkpoint_every",
                    "train.keep_last", "train.picture_every_epochs", "train.picture_images",
                    "data.num_workers", "train.device", "train.nonfinite", "data.prior_cache", "model.compile")


def run_folder_of(path: str | Path) -> Optional[Path]:
    """The run folder `path` names: itself (when it holds a config.yaml or checkpoints/), the run a
    checkpoint file or the checkpoints/ folder lies in, or None."""
    path = Path(path)
    if path.is_dir() and ((path / "config.yaml").is_file() or (path / "checkpoints").is_dir()):
        return path
    return _enclosing_run(path)


def resolve_checkpoint(spec: str | Path, flag: str = "--checkpoint") -> str:
    """`spec` as a checkpoint file path (or the `random:` spec unchanged); raises CheckpointError.

    A run folder means its latest checkpoint; so does its ``checkpoints/`` folder. A missing file's error
    lists the checkpoints that exist, because step numbers depend on the config and the data.
    """
    text = str(spec)
    if text.startswith("random:"):
        return text
    path = Path(text)
    if path.is_dir():
        found = list_checkpoints(path) or list_checkpoints(path / "checkpoints")
        if not found:
            raise CheckpointError(f"{flag} {text}: the folder holds no checkpoints (checkpoints/step_*.pt); "
                                  "has the run saved one yet?")
        return str(found[-1][1])
    if not path.exists():
        raise CheckpointError(f"{flag} {text}: no such file; {_what_exists(path, flag)}")
    return text


def move_aside(run_dir: Path) -> Path:
    """Rename `run_dir` to ``<name>.old-<UTC time>`` (never deletes); returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
    os.replace(run_dir, target)
    return target


def current_umask() -> int:
    """The process umask (read by setting and restoring it: the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ensure_writable_dir(path: Path) -> None:
    """Create folder `path` if needed and write/delete a probe file in it; raises OSError if it cannot.

    A probe, not `os.access`: root passes access checks on read-only folders and immutable files.
    """
    path.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path, prefix=".discorep-write-test-")
    os.close(fd)
    os.unlink(name)
