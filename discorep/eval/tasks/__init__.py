"""The `discorep eval TASK` registry: one file per task in this package, none of them importing torch.

A task file calls :func:`register_eval` with its name, help line, the function adding its own
arguments, its ``run(args)`` and, if it has inputs to check, ``check(args)``; the CLI
(``discorep/cli_eval.py``) builds one subcommand per registered task, runs ``check`` before anything
heavy loads, then ``run`` with a namespace holding only the task's own arguments (the shared model
arguments of ``cliargs.add_model_args`` included). Task files are found by listing this package, so adding
an eval is one file here; keep torch imports inside ``run`` (the bundled tasks import their evaluation
module, ``discorep/eval/<task>.py``, there) so `discorep --help` and argument errors stay sub-second.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Optional

from discorep.cliargs import SEED_HELP, SIZE_HELP

Args = argparse.Namespace


@dataclass(frozen=True)
class EvalTask:
    name: str  # the subcommand: `discorep eval <name>`
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]  # the task's own flags
    run: Callable[[Args], Any]
    check: Optional[Callable[[Args], None]] = None  # up-front input checks, raising UsageError
    size: int = 448  # default --size
    features: str = "c5"  # default --features
    order: int = 1000  # position in `discorep eval --help` (bundled tasks: 10, 20, ...)
    size_help: str = SIZE_HELP  # what --size does in this task
    seed_help: str = SEED_HELP  # what --seed seeds in this task


_TASKS: dict[str, EvalTask] = {}


def register_eval(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],  # noqa: A002
                  run: Callable[[Args], Any], *, check: Optional[Callable[[Args], None]] = None, size: int = 448,
                  features: str = "c5", order: int = 1000, size_help: str = SIZE_HELP,
                  seed_help: str = SEED_HELP) -> EvalTask:
    """Register `discorep eval <name>`; a second registration of the same name is an error. `size_help` and
    `seed_help` say what the shared --size and --seed do in this task."""
    task = EvalTask(name, help, add_arguments, run, check, size, features, order, size_help, seed_help)
    if name in _TASKS and _TASKS[name] != task:
        raise ValueError(f"an eval task named {name!r} is already registered")
    _TASKS[name] = task
    return task


def run_module(module: str) -> Callable[[Args], Any]:
    """A ``run(args)`` calling ``<module>.run(**args)``, imported only when the task runs (torch loads then)."""

    def run(args: Args) -> Any:
        return importlib.import_module(module).run(**vars(args))

    return run


def eval_tasks() -> list[EvalTask]:
    """Every task: the files of this package (imported once) and any registered from elsewhere."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return sorted(_TASKS.values(), key=lambda t: (t.order, t.name))


def get_eval(name: str) -> EvalTask:
    if name not in _TASKS:
        eval_tasks()
    return _TASKS[name]
