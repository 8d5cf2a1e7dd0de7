"""`discorep eval knn`: weighted k-NN classification on frozen global features (discorep/eval/knn.py)."""

from __future__ import annotations

from discorep import cliargs as A
from discorep.eval.tasks import register_eval, run_module
from discorep.eval.tasks._shared import add_labelled_args, check_labelled


def add_arguments(t) -> None:
    add_labelled_args(t)
    t.add_argument("--k", type=A.positive_int, default=20, help="neighbours voting")
    t.add_argument("--temperature", type=A.positive_float, default=0.07, help="vote weight temperature")


register_eval("knn", "weighted k-NN classification (k=20, T=0.07, cosine)", add_arguments,
              run_module("discorep.eval.knn"), check=check_labelled, size=224, order=40,
              seed_help="recorded in the JSON only: k-NN draws nothing at random")
