"""`discorep eval linear-seg`: a linear segmentation head on frozen dense features (discorep/eval/linear_seg.py)."""

from __future__ import annotations

from discorep import cliargs as A
from discorep.eval.tasks import register_eval, run_module
from discorep.eval.tasks._shared import add_set_args, check_sets


def add_arguments(t) -> None:
    add_set_args(t, "train", "val")
    t.add_argument("--epochs", type=A.positive_int, default=25, help="head training epochs")
    t.add_argument("--lr", type=A.positive_float, default=0.01, help="head learning rate (SGD)")
    t.add_argument("--train-label-size", type=A.positive_int, default=100,
                   help="training targets resized to N x N (NeCo)")
    t.add_argument("--score-size", type=A.positive_int, default=None,
                   help="score at N x N instead of the full label size (NeCo: 100; default: full size)")


register_eval("linear-seg", "linear 1x1-conv head on frozen dense features, mIoU (Leopart/NeCo)", add_arguments,
              run_module("discorep.eval.linear_seg"), check=check_sets, order=60,
              seed_help="seeds the head's initialisation and the order of its training batches")
