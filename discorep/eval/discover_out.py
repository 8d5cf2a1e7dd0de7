"""What `discover --out` already holds: the settings a rerun must match to continue, and the refusal of a
folder holding another checkpoint's results or results of other settings (torch-free).

`discover.json` records the settings; an earlier run with the same ones (an interrupted run) is continued
(its complete outputs kept), any other is refused with one line naming both unless `--overwrite`, which
moves the folder aside (`runs.move_aside`, as `pretrain --overwrite` does). The checkpoint is identified
by its path and by its file's size and modification time, so a run retrained under the same name is
another checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from discorep.errors import UsageError
from discorep.runs import resolve_checkpoint

# What must match for a rerun to keep (continue) the outputs of an earlier one.
SETTINGS = ("checkpoint", "checkpoint_file", "ks", "size", "features", "overlay_k", "seed", "refine", "padding")


def earlier_summary(out: Path) -> dict | None:
    """The earlier run's discover.json: {} when there is none, None when one exists but cannot be read."""
    path = out / "discover.json"
    if not path.exists():
        return {}
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return earlier if isinstance(earlier, dict) else None


def checkpoint_file(checkpoint: str) -> dict | None:
    """Size and modification time of the checkpoint file (a run folder: its latest), None for random:<arch>:
    a run retrained under the same name writes another checkpoint under the same path."""
    path = Path(checkpoint)
    if checkpoint.startswith("random:") or not (path.is_file() or path.is_dir()):
        return None
    if path.is_dir():
        path = Path(resolve_checkpoint(path))
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _same(key: str, a, b) -> bool:
    if key == "checkpoint" and a != b and isinstance(a, str) and not a.startswith("random:"):
        try:  # the same file spelled another way (relative vs absolute)
            return Path(a).samefile(b)
        except OSError:
            return False
    return a == b


def differences(earlier: dict, settings: dict) -> list[str]:
    """The settings an earlier run recorded otherwise (a discover.json older than `checkpoint_file` is
    compared without it)."""
    keys = [k for k in SETTINGS if k != "checkpoint_file" or k in earlier]
    return [key for key in keys if not _same(key, earlier.get(key), settings[key])]


def claim_out(out: Path, settings: dict, earlier: dict | None, overwrite: bool) -> bool:
    """Whether `out`'s earlier results (a discover.json) must be moved aside first: with `overwrite`, whenever
    there are some. Without it, results of another checkpoint or other settings are refused with one line
    naming both, and those of the same settings (an interrupted run) are continued."""
    if earlier == {}:
        return False
    if overwrite:
        if Path.cwd().resolve().is_relative_to(out.resolve()):
            raise UsageError(f"--overwrite cannot move --out {out} aside: it is (or holds) the current folder; "
                             "run from elsewhere or choose another --out")
        return True
    if earlier is None:
        recorded = f"whose {out / 'discover.json'} cannot be read, so what they were made with is unknown"
    else:
        diff = differences(earlier, settings)
        if not diff:
            return False
        recorded = _describe_difference(earlier, settings, diff)
    raise UsageError(f"--out {out} holds discover results {recorded}; pass --overwrite to move that folder aside "
                     f"to {out.name}.old-<time> (nothing is deleted), or choose another --out")


def _describe_difference(earlier: dict, settings: dict, diff: list[str]) -> str:
    keys = [k for k in diff if k != "checkpoint_file"]
    theirs = [f"{k}={_show(earlier.get(k))}" for k in keys]
    mine = [f"{k}={_show(settings[k])}" for k in keys]
    if diff[0] == "checkpoint_file":  # the same path, rewritten since (e.g. a run retrained under its name)
        theirs.insert(0, f"checkpoint {settings['checkpoint']} as it was then")
        mine.insert(0, "that file as it is now (another size or modification time)")
    return f"made with {', '.join(theirs)}; this run has {', '.join(mine)}"


def _show(value) -> str:
    if value is None:
        return "(not recorded)"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def already_done(out: Path, names: list[str], settings: dict, earlier: dict | None) -> set[str]:
    """The output `names` whose npz and png an earlier run with the same settings completed (none if the
    settings differ)."""
    if not earlier or differences(earlier, settings):
        return set()
    return {n for n in names if (out / f"{n}.npz").is_file() and (out / f"{n}.png").is_file()}
