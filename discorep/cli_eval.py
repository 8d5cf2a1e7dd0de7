"""The `eval` subcommands, built from the eval-task registry (`discorep/eval/tasks/`, no torch).

Each registered task gets a subparser with the shared model arguments (`cliargs.add_model_args`) and its
own; `cli._cmd_eval` runs its `check` and then its `run`. Adding an eval is one file in
`discorep/eval/tasks/` (see docs/architecture.md, "How to add an eval"); nothing here changes.
"""

from __future__ import annotations

import argparse

from discorep import cliargs as A
from discorep.eval.tasks import EvalTask, eval_tasks
from discorep.eval.tasks._shared import add_refine_args

__all__ = ["add_eval_parsers", "add_refine_args", "own_arguments"]

_SHARED = ("func", "command", "task", "verbose", "debug")  # parser plumbing and global flags, not a task's


def _add_task(tasks, task: EvalTask) -> None:
    t = tasks.add_parser(task.name, help=task.help, description=task.help, formatter_class=A.HelpFormatter)
    A.common(t)
    A.add_model_args(t, size=task.size, features=task.features, size_help=task.size_help, seed_help=task.seed_help)
    task.add_arguments(t)


def add_eval_parsers(sub, run) -> None:
    """`discorep eval TASK` for every registered task; each runs `run(args)` (cli._cmd_eval)."""
    registered = eval_tasks()
    p = sub.add_parser("eval", help="measure masks and features: " + ", ".join(t.name for t in registered),
                       formatter_class=A.HelpFormatter)
    A.common(p)
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    for task in registered:
        _add_task(tasks, task)
    p.set_defaults(func=run)


def own_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """The task's own arguments (model arguments included), without the parser's plumbing."""
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in _SHARED})
