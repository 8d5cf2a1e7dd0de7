"""`--resume`: which checkpoint, and whether the run it continues was trained with the same config."""

from __future__ import annotations

from pathlib import Path

from discorep.checkpoint import latest_checkpoint, resolve_checkpoint
from discorep.engine.configio import MISSING, diff_configs
from discorep.errors import ConfigError, ResumeConfigError  # noqa: F401 (errors live in the leaf)

# Keys that may change on --resume without changing what is trained.
RESUME_SAFE_KEYS = ("train.max_steps", "train.progress", "train.log_every", "train.checkpoint_every",
                    "train.keep_last", "train.picture_every_epochs", "train.picture_images",
                    "data.num_workers", "train.device", "train.nonfinite", "data.prior_cache", "model.compile")




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
             if d[0] not in RESUME_SAFE_KEYS and not added_at_default(d, defaults or {})]
    if saved_world is not None and world is not None and saved_world != world:
        batch = current["train"]["batch_size"]
        diffs.append(("world size (processes; global batch = world x train.batch_size)",
                      f"{saved_world} (global batch {saved_world * batch})", f"{world} (global batch {world * batch})"))
    if diffs and not allow_change:
        lines = "\n".join(f"  {k}: checkpoint={a!r} now={b!r}" for k, a, b in diffs)
        raise ResumeConfigError(f"--resume: the run was trained with a different config:\n{lines}\n"
                                "Use the same config, or pass --allow-config-change to resume anyway.")
