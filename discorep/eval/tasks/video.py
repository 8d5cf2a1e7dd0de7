"""`discorep eval video`: DAVIS label propagation (discorep/eval/video.py)."""

from __future__ import annotations

from pathlib import Path

from discorep import cliargs as A
from discorep.eval.tasks import register_eval, run_module
from discorep.eval.tasks._shared import add_refine_args


def add_arguments(t) -> None:
    t.add_argument("--davis", required=True, type=Path, help="DAVIS-layout root (JPEGImages/, Annotations/)")
    t.add_argument("--topk", type=A.positive_int, default=5, help="neighbours each pixel takes labels from")
    t.add_argument("--context", type=A.positive_int, default=7, help="previous frames used as context")
    t.add_argument("--radius", type=A.positive_int, default=12, help="spatial neighbourhood radius (feature cells)")
    t.add_argument("--temperature", type=A.positive_float, default=0.7, help="softmax temperature of affinities")
    add_refine_args(t, "none", None)
    t.add_argument("--save-masks", type=Path, default=None,
                   help="write the predictions as DAVIS palette PNGs: DIR/<sequence>/<frame>.png")


def check(args) -> None:
    A.check_input_dir(args.davis, "--davis")


register_eval("video", "DAVIS label propagation: J, F, J&F (Odin §4.3, DINO protocol)", add_arguments,
              run_module("discorep.eval.video"), check=check, size=480, order=30,
              size_help="frames are resized so that their short side is SIZE, aspect kept, both sides rounded to a "
                        "multiple of the network's coarsest stride (32 for a ResNet; >= 32)",
              seed_help="recorded in the JSON only: label propagation draws nothing at random")
