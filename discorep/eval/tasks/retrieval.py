"""`discorep eval retrieval`: dense nearest-neighbour retrieval (discorep/eval/retrieval.py)."""

from __future__ import annotations

from discorep import cliargs as A
from discorep.eval.tasks import register_eval, run_module
from discorep.eval.tasks._shared import add_set_args, check_sets


def add_arguments(t) -> None:
    add_set_args(t, "train", "val")
    t.add_argument("--k", type=A.positive_int, default=30, help="neighbours per val patch")
    t.add_argument("--temperature", type=A.positive_float, default=0.02, help="softmax temperature of the vote")
    t.add_argument("--bank-size", type=A.positive_int, default=102400,
                   help="memory bank patches (seeded subset beyond)")


register_eval("retrieval", "dense nearest-neighbour retrieval from a train memory bank (Hummingbird)",
              add_arguments, run_module("discorep.eval.retrieval"), check=check_sets, order=80,
              seed_help="seeds the memory bank's subset of train patches (drawn when there are more than "
                        "--bank-size)")
