"""`--resume`: which checkpoint, and whether the run it continues was trained with the same config."""

from __future__ import annotations

from pathlib import Path

from discorep.checkpoint import (latest_checkpoint, load_checkpoint, narrow_legacy_config, resolve_checkpoint,
                                 upgrade_checkpoint)
from discorep.engine.configio import MISSING, diff_configs, field_defaults, to_dict
from discorep.errors import ConfigError, ResumeConfigError  # noqa: F401 (errors live in the leaf)
from discorep.runs import RESUME_SAFE_KEYS  # noqa: F401 (keys that may change on --resume; torch-free there)

# Where the run folder lies, not what it trains: a moved folder resumes (`pretrain --resume RUN` sets them).
PLACEMENT_KEYS = ("train.out_dir", "train.name")


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    return Path(resolve_checkpoint(resume, "--resume"))  # a file, or a run folder's latest


def added_at_default(diff: tuple, defaults: dict) -> bool:
    """A key the checkpoint lacks (an option added to discorep after it was written) now at its default:
    options are added with the old behaviour as their default, so this changes nothing."""
    key, saved, now = diff
    return saved is MISSING and key in defaults and defaults[key] == now


def check_resume_config(saved: dict, current: dict, allow_change: bool, saved_world: int | None = None,
                        world: int | None = None, defaults: dict | None = None) -> None:
    """Refuse to resume with a different config or number of processes unless `allow_change`.

    `defaults` (`configio.field_defaults` of the current config): keys missing from the checkpoint are
    accepted at these values, so a run resumes after an upgrade of discorep that added options."""
    diffs = [d for d in diff_configs(saved, current)
             if d[0] not in (*RESUME_SAFE_KEYS, *PLACEMENT_KEYS) and not added_at_default(d, defaults or {})]
    if saved_world is not None and world is not None and saved_world != world:
        batch = current["train"]["batch_size"]
        diffs.append(("world size (processes; global batch = world x train.batch_size)",
                      f"{saved_world} (global batch {saved_world * batch})", f"{world} (global batch {world * batch})"))
    if diffs and not allow_change:
        lines = "\n".join(f"  {k}: checkpoint={a!r} now={b!r}" for k, a, b in diffs)
        raise ResumeConfigError(f"--resume: the run was trained with a different config:\n{lines}\n"
                                "Use the same config, or pass --allow-config-change to resume anyway.")


def checked_resume_state(path: Path, cfg, allow_change: bool, world: int) -> dict:
    """The checkpoint at `path`, upgraded, once its config is checked against `cfg` (the `Config`)."""
    state = upgrade_checkpoint(load_checkpoint(path))
    narrow_legacy_config(state, to_dict(cfg.method))
    check_resume_config(state["config"], to_dict(cfg), allow_change, state.get("world_size"), world,
                        field_defaults(cfg))
    return state
