"""Errors a user can act on: the CLI prints their message (no traceback) and exits with status 2."""

from __future__ import annotations

import sys


class UsageError(ValueError):
    """A command-line value that cannot work (e.g. --k 0); the message says which and why."""


class ConfigError(ValueError):
    """A config file, override or value is invalid; the message says which key and how to fix it."""


class Interrupted(Exception):
    """Ctrl-C / SIGTERM stopped a command; the message says what is kept and how to continue."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every user-facing error class (imported lazily so `discorep --help` does not load torch)."""
    from discorep.data.images import BadImageError, DatasetError
    from discorep.data.priors import PriorError
    from discorep.discovery.align import AlignInputError, LabelIdError
    from discorep.checkpoint import CheckpointError
    from discorep.engine.train import NonFiniteLossError, PeerLostError, TooManyBadImagesError

    return (ConfigError, CheckpointError, BadImageError, DatasetError, PriorError, NonFiniteLossError,
            TooManyBadImagesError, PeerLostError, LabelIdError, AlignInputError, UsageError, FileNotFoundError)


def is_user_error(err: BaseException) -> bool:
    """Whether `err` is one of `user_errors()`; errors raised before torch was loaded are checked
    without importing it, so a bad argument stays a sub-second answer."""
    from discorep.runs import CheckpointError

    if isinstance(err, (UsageError, ConfigError, CheckpointError, FileNotFoundError)):
        return True
    return "torch" in sys.modules and isinstance(err, user_errors())


def describe(err: BaseException) -> str:
    """The message; for a bare OS error ("[Errno 28] ...") its reason and file."""
    if isinstance(err, OSError) and err.strerror and str(err).startswith("[Errno"):
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return str(err).strip() or type(err).__name__
