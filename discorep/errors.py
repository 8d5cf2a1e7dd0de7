"""Errors a user can act on: the CLI prints their message (no traceback) and exits with status 2."""

from __future__ import annotations


def _user_errors() -> tuple[type[BaseException], ...]:
    from discorep.data.images import BadImageError, DatasetError
    from discorep.engine.checkpoint import CheckpointError
    from discorep.engine.configio import ConfigError
    from discorep.engine.train import NonFiniteLossError, TooManyBadImagesError

    return (ConfigError, CheckpointError, BadImageError, DatasetError, NonFiniteLossError,
            TooManyBadImagesError, FileNotFoundError)


class _Lazy(type):
    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, _user_errors())

    def __subclasscheck__(cls, sub) -> bool:
        return issubclass(sub, _user_errors())


class UserError(metaclass=_Lazy):
    """`except UserError` catches every user-facing error class without importing torch at startup."""


def describe(err: BaseException) -> str:
    return str(err) or type(err).__name__
