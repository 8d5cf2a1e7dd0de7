"""`discorep eval overcluster`: k-means over all val features, matched to classes (discorep/eval/overcluster.py)."""

from __future__ import annotations

from discorep import cliargs as A
from discorep.eval.tasks import register_eval, run_module
from discorep.eval.tasks._shared import add_set_args, check_sets


def add_arguments(t) -> None:
    add_set_args(t, "val")
    t.add_argument("--k", default="classes,100,300,500", help="cluster counts; 'classes' = number of classes")
    t.add_argument("--seeds", type=A.positive_int, default=5,
                   help="k-means runs, seeded SEED, SEED+1, ... (mean and std reported)")


register_eval("overcluster", "k-means over all val features, Hungarian / many-to-one mIoU (Leopart)", add_arguments,
              run_module("discorep.eval.overcluster"), check=check_sets, order=70,
              seed_help="the first k-means seed (see --seeds)")
