"""Errors a user can act on: the CLI prints their message (no traceback) and exits with status 2.

The leaf of the package: every user-facing error class is defined here and this module imports nothing
from discorep (nor torch), so any layer can raise them and `discorep --help` stays torch-free. The old
homes (`data.images.BadImageError`, `engine.configio.ConfigError`, ...) re-export them.
"""

from __future__ import annotations

import os


class UsageError(ValueError):
    """A command-line value that cannot work (e.g. --k 0); the message says which and why."""


class ConfigError(ValueError):
    """A config file, override or value is invalid; the message says which key and how to fix it."""


class Interrupted(Exception):
    """Ctrl-C / SIGTERM stopped a command; the message says what is kept and how to continue.

    `signum` is the signal that stopped it; the CLI exits with 128 + signum (130 for Ctrl-C, 143 for
    SIGTERM, the shell's convention), so a scheduler or a `&&` chain tells it from a finished run.
    """

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception (as Python turns SIGINT into KeyboardInterrupt) during set-up work,
    so the code that handles Ctrl-C handles it too; `signum` tells the two apart."""

    signum = 15


class ConfigError(ValueError):
    """A config file, override or value is invalid; the message says which key and how to fix it."""


class ResumeConfigError(ConfigError):
    """`--resume` found a run trained with another config (or number of processes)."""


class RunFolderError(ConfigError):
    """The run folder already holds another run's checkpoints."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the file and what to do."""


class BadImageError(Exception):
    """An image file that cannot be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path!r}: {reason}")


class DatasetError(Exception):
    """A dataset folder or annotation file that is missing, empty or malformed."""


class PriorError(ValueError):
    """Bad prior name, parameter or input image; the message says what is accepted."""


class LabelIdError(ValueError):
    """A label map holds an id outside [-1, num_masks)."""


class AlignInputError(ValueError):
    """Shapes, dtypes, devices or boxes passed to `align_masks` are inconsistent."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf (with `train.nonfinite: stop`)."""


class TooManyBadImagesError(RuntimeError):
    """More unreadable images than `data.max_bad_images` allows."""


class PeerLostError(RuntimeError):
    """Another process of a distributed run died or stopped answering."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every user-facing error class (subclasses such as `RunFolderError` are covered by their base)."""
    return (ConfigError, CheckpointError, BadImageError, DatasetError, PriorError, NonFiniteLossError,
            TooManyBadImagesError, PeerLostError, LabelIdError, AlignInputError, UsageError, FileNotFoundError)


def is_user_error(err: BaseException) -> bool:
    """Whether `err` is one of `user_errors()`: printed as one line, exit status 2."""
    return isinstance(err, user_errors())


def describe(err: BaseException) -> str:
    """The message; for a bare OS error ("[Errno 28] ...") its reason and file."""
    if isinstance(err, OSError) and err.strerror and str(err).startswith("[Errno"):
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return str(err).strip() or type(err).__name__
