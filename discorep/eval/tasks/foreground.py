"""`discorep eval foreground`: the CUB foreground protocol (discorep/eval/foreground.py)."""

from __future__ import annotations

from pathlib import Path

from discorep import cliargs as A
from discorep.errors import UsageError
from discorep.eval.tasks import register_eval, run_module
from discorep.eval.tasks._shared import KMEANS_SEED_HELP, add_refine_args


def add_arguments(t) -> None:
    t.add_argument("--coco", type=Path, help="COCO json: foreground = union of its instances")
    t.add_argument("--masks", type=Path, help="folder of foreground mask PNGs named like the images")
    t.add_argument("--images", required=True, type=Path, help="folder of the images")
    t.add_argument("--k", type=A.positive_int, default=5, help="clusters per image")
    t.add_argument("--oracle", action="store_true",
                   help="ALSO report the upper bound that picks the best cluster by ground truth")
    add_refine_args(t, "none", "zeros")


def check(args) -> None:
    if (args.coco is None) == (args.masks is None):
        raise UsageError("give exactly one ground truth: --coco JSON or --masks FOLDER")
    if args.coco is not None:
        A.check_coco_json(args.coco)
    else:
        A.check_input_dir(args.masks, "--masks")
    A.check_input_dir(args.images, "--images")


register_eval("foreground", "CUB protocol: K=5, Hungarian foreground matching, mean IoU", add_arguments,
              run_module("discorep.eval.foreground"), check=check, order=20,
              seed_help=KMEANS_SEED_HELP)
