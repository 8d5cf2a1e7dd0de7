"""Errors a user can act on: the CLI prints their message (no traceback) and exits with status 2."""

from __future__ import annotations


class UsageError(ValueError):
    """A command-line value that cannot work (e.g. --k 0); the message says which and why."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every user-facing error class (imported lazily so `discorep --help` does not load torch)."""
    from discorep.data.images import BadImageError, DatasetError
    from discorep.data.priors import PriorError
    from discorep.discovery.align import AlignInputError, LabelIdError
    from discorep.checkpoint import CheckpointError
    from discorep.engine.configio import ConfigError
    from discorep.engine.train import NonFiniteLossError, PeerLostError, TooManyBadImagesError

    return (ConfigError, CheckpointError, BadImageError, DatasetError, PriorError, NonFiniteLossError,
            TooManyBadImagesError, PeerLostError, LabelIdError, AlignInputError, UsageError, FileNotFoundError)


def describe(err: BaseException) -> str:
    return str(err) or type(err).__name__
