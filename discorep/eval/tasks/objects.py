"""`discorep eval objects`: object discovery on a COCO-format set (discorep/eval/objects.py)."""

from __future__ import annotations

from pathlib import Path

from discorep import cliargs as A
from discorep.eval.tasks import register_eval, run_module
from discorep.eval.tasks._shared import KMEANS_SEED_HELP, add_refine_args


def add_arguments(t) -> None:
    t.add_argument("--coco", required=True, type=Path, help="COCO instances json")
    t.add_argument("--images", required=True, type=Path, help="folder of the json's images")
    t.add_argument("--k", type=A.k_list, default="1,2,4,8,16,32,64,128", help="K values (proposals = their sum)")
    t.add_argument("--filter-small", action="store_true",
                   help="drop masks < 100 px at 224 and keep at most 16 per image (Odin Table A.1)")
    add_refine_args(t, "none", "zeros")


def check(args) -> None:
    A.check_coco_json(args.coco)
    A.check_input_dir(args.images, "--images")


register_eval("objects", "object discovery on a COCO-format set: ABO_i, ABO_c, OR (Odin §3.2)", add_arguments,
              run_module("discorep.eval.objects"), check=check, order=10,
              seed_help=KMEANS_SEED_HELP)
