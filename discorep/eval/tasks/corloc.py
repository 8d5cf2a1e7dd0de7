"""`discorep eval corloc`: single-object localisation, CorLoc (discorep/eval/corloc.py)."""

from __future__ import annotations

from discorep.eval.tasks import register_eval, run_module
from discorep.eval.tasks._shared import KMEANS_SEED_HELP, add_refine_args, add_set_args, check_sets


def add_arguments(t) -> None:
    add_set_args(t, "val", detection=True)
    add_refine_args(t, "none", "zeros")


register_eval("corloc", "single-object localisation: K=2 foreground box, CorLoc (LOST)", add_arguments,
              run_module("discorep.eval.corloc"), check=check_sets, order=90,
              seed_help=KMEANS_SEED_HELP)
