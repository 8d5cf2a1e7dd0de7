"""`--resume`: which checkpoint, and whether the run it continues was trained with the same config."""

from __future__ import annotations

from pathlib import Path

from discorep.checkpoint import latest_checkpoint, resolve_checkpoint
from discorep.engine.configio import diff_configs
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


def check_resume_config(saved: dict, current: dict, allow_change: bool, saved_world: int | None = None,
                        world: int | None = None) -> None:
    """Refuse to resume with a different config or number of processes unless `allow_change`."""
    diffs = [d for d in diff_configs(saved, current) if d[0] not in RESUME_SAFE_KEYS]
    if saved_world is not None and world is not None and saved_world != world:
        batch = current["train"]["batch_size"]
        diffs.append(("world size (processes; global batch = world x train.batch_size)",
                      f"{saved_world} (global batch {saved_world * batch})", f"{world} (global batch {world * batch})"))
    if diffs and not allow_change:
        lines = "\n".join(f"  {k}: checkpoint={a!r} now={b!r}" for k, a, b in diffs)
        raise ResumeConfigError(f"--resume: the run was trained with a different config:\n{lines}\n"
                                "Use the same config, or pass --allow-config-change to resume anyway.")
