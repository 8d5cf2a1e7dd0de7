"""What `pretrain` decides before its first step, so that a run fails early, clearly, and loses nothing.

* the device asked for exists, and the run and prior-cache folders accept files;
* a run folder holding checkpoints is never silently trained over (`--resume auto`, a new
  `train.name`, or `--overwrite`, which moves it aside);
* unreadable images already known at start-up (the region-prior build tried every file; without a prior,
  the files read until the first good one) are counted against the limit before training starts;
* Ctrl-C / SIGTERM during the set-up (the prior build can take hours) stop it promptly;
* a run that fails before its first checkpoint leaves no folder behind (or one marked FAILED.txt when
  its skipped.txt or logged steps are worth reading).
"""

from __future__ import annotations

import logging
import random
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from discorep.data.images import BadImageError, DatasetError, load_rgb
from discorep.engine.config import Config
from discorep.engine.configio import ConfigError
from discorep.engine.distributed import DistInfo, barrier
from discorep.runs import ensure_writable_dir, latest_checkpoint, move_aside

log = logging.getLogger("discorep")


from discorep.errors import RunFolderError, Terminated, TooManyBadImagesError  # noqa: F401,E402 (re-export)


def check_environment(cfg: Config) -> None:
    """The device and the output folders, before anything is built."""
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible to torch (torch.cuda.is_available() is "
                          "False); use train.device=cpu, or auto to take a GPU when there is one")
    folders = [("train.out_dir", cfg.train.out_dir)]
    if cfg.data.prior != "none" and cfg.data.kind != "shards":
        folders.append(("data.prior_cache", cfg.data.prior_cache))
    for key, folder in folders:
        try:
            ensure_writable_dir(Path(folder))
        except OSError as err:
            raise ConfigError(f"cannot write {key}={folder}: {err.strerror or err}; "
                              f"set {key} to a writable folder") from None


def seed_rngs(seed: int) -> None:
    """Seed every global RNG a checkpoint stores (`checkpoint.get_rng_state`): torch's, and also Python's
    and numpy's, which training never draws from but which would otherwise start from OS entropy, so two
    runs of one config would write checkpoints that differ in their RNG entries (issue 23.6)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def claim_run_dir(run_dir: Path, resume: str | None, overwrite: bool, dist_info: DistInfo) -> None:
    """Refuse to train from scratch over another run's checkpoints; `overwrite` moves that run aside."""
    latest = latest_checkpoint(run_dir)
    if latest is None or resume is not None:
        if dist_info.is_main:
            (run_dir / "FAILED.txt").unlink(missing_ok=True)  # a failed start's mark: this run tries again
        return
    if not overwrite:
        raise RunFolderError(
            f"{run_dir} already holds a run (latest checkpoint {latest.name}); starting over would mix two runs. "
            f"Continue it with --resume auto, start a separate run with train.name=NEW_NAME, or pass --overwrite "
            f"to move the old folder aside to {run_dir.name}.old-<time> (nothing is deleted)")
    if dist_info.is_main:
        moved = move_aside(run_dir)
        log.warning("--overwrite: moved the previous run %s aside to %s", run_dir, moved)
    barrier()


@contextmanager
def interrupt_on_sigterm():
    """SIGTERM raises `errors.Terminated`, a KeyboardInterrupt (as Ctrl-C does) that remembers its signal
    (exit status 143, not 130), while set-up work runs; then the old handler returns."""
    def _raise(signum, frame):
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _known_bad_images(dataset) -> dict[str, str]:
    """{path: reason} of images known to be unreadable: the prior build's failures, or (no prior) the
    files read in order until the first readable one."""
    paths = getattr(dataset, "paths", None)
    if paths is None:  # shards: checked when they were written
        return {}
    cache = getattr(dataset, "prior_cache", None)
    if cache is not None:
        by_key = {dataset.prior_key(i): str(p) for i, p in enumerate(paths)}
        return {by_key.get(key, key): reason for key, reason in cache.stats.failures}
    bad = {}
    for path in paths:
        try:
            load_rgb(path)
            break
        except BadImageError as err:
            bad[str(path)] = err.reason
    return bad


def check_bad_count(cfg: Config, n_bad: int, n_total: int, run_dir: Path) -> None:
    """More unreadable images than both data.max_bad_images and data.max_bad_fraction allow: stop."""
    d = cfg.data
    allowed = max(d.max_bad_images, int(d.max_bad_fraction * n_total))
    if n_bad > allowed:
        raise TooManyBadImagesError(
            f"{n_bad} of {n_total} images are unreadable, more than the {allowed} allowed (data.max_bad_images="
            f"{d.max_bad_images}, data.max_bad_fraction={d.max_bad_fraction}); they are listed in "
            f"{run_dir / 'skipped.txt'}: remove or fix them, or raise data.max_bad_images")


def check_bad_images(trainer) -> None:
    """Count the unreadable images known at start-up (all processes' shares) before the first step."""
    bad = _known_bad_images(trainer.dataset)
    if trainer.dist.world_size > 1:
        shares: list = [None] * trainer.dist.world_size
        dist.all_gather_object(shares, bad)
        bad = {k: v for share in shares for k, v in share.items()}
    new = {path: reason for path, reason in sorted(bad.items()) if path not in trainer.skipped}
    trainer.skipped.update(new)
    listing = trainer.run_dir / "skipped.txt"
    if new and trainer.dist.is_main:
        with open(listing, "a") as f:
            f.writelines(f"{path}\t{reason}\n" for path, reason in new.items())
        log.warning("%d unreadable image(s) found at start-up, listed in %s", len(new), listing)
    n = len(trainer.dataset)
    if len(trainer.skipped) >= n:
        root = trainer.cfg.data.root
        raise DatasetError(f"no readable images under {root} ({n} files tried; see {listing})")
    check_bad_count(trainer.cfg, len(trainer.skipped), n, trainer.run_dir)


def clean_failed_run(run_dir: Path, err: BaseException) -> None:
    """A run folder this call created, whose run failed before any checkpoint: remove it, or mark it
    FAILED.txt when it holds something to read (a skipped.txt the error points to, logged steps)."""
    if not run_dir.is_dir() or latest_checkpoint(run_dir) is not None:
        return
    if (run_dir / "skipped.txt").exists() or (run_dir / "metrics.jsonl").exists():  # worth reading: keep, mark
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        (run_dir / "FAILED.txt").write_text(f"this run failed before its first checkpoint: {reason}\n"
                                            "delete this folder, or rerun: the rerun starts afresh here\n")
        return
    shutil.rmtree(run_dir, ignore_errors=True)
