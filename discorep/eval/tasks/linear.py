"""`discorep eval linear`: a linear probe on frozen global features (discorep/eval/linear.py)."""

from __future__ import annotations

from discorep import cliargs as A
from discorep.eval.tasks import register_eval, run_module
from discorep.eval.tasks._shared import add_labelled_args, check_labelled


def add_arguments(t) -> None:
    add_labelled_args(t)
    t.add_argument("--epochs", type=A.positive_int, default=100, help="probe training epochs")
    t.add_argument("--lr", type=A.positive_float, default=0.1, help="probe learning rate")


register_eval("linear", "linear probe on frozen global features", add_arguments,
              run_module("discorep.eval.linear"), check=check_labelled, size=224, order=50,
              seed_help="seeds the probe's initialisation and the order of its training batches")
