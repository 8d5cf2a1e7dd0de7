"""The `eval` subcommands' parsers and input checks (no torch): one `_eval_task` block per task.

To add an eval: a module `discorep/eval/<task>.py` with `run(**options)`, and one block here (its
parser and, if it has inputs to check, a `check=` function). `discover` shares `add_refine_args`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from discorep import cliargs as A
from discorep.errors import UsageError


def add_refine_args(p: argparse.ArgumentParser, refine: str, padding: str | None) -> None:
    """--refine and its superpixel options (eval/refine.py); --padding where k-means segments (eval/segment.py)."""
    p.add_argument("--refine", choices=("none", "slic", "felzenszwalb"), default=refine,
                   help=f"cluster superpixel regions instead of feature cells, so masks follow image edges "
                        f"(default {refine})")
    p.add_argument("--superpixels", type=int, default=256, help="SLIC segment count; Felzenszwalb min_size = "
                   "size^2/(4*N) (default 256)")
    p.add_argument("--compactness", type=float, default=10.0, help="SLIC compactness (default 10)")
    if padding is not None:
        p.add_argument("--padding", choices=("zeros", "replicate"), default=padding,
                       help=f"how the encoder's convolutions pad; replicate removes the frame of segments along "
                            f"the border (default {padding})")


def _check_objects(args):
    A.check_coco_json(args.coco)
    A.check_input_dir(args.images, "--images")


def _check_foreground(args):
    if (args.coco is None) == (args.masks is None):
        raise UsageError("give exactly one ground truth: --coco JSON or --masks FOLDER")
    if args.coco is not None:
        A.check_coco_json(args.coco)
    else:
        A.check_input_dir(args.masks, "--masks")
    A.check_input_dir(args.images, "--images")


def _check_video(args):
    A.check_input_dir(args.davis, "--davis")


def _check_labelled(args):
    A.check_input_dir(args.train, "--train")
    A.check_input_dir(args.val, "--val")


def _eval_task(tasks, name: str, helptext: str, check, size: int = 448, features: str = "c5"):
    t = tasks.add_parser(name, help=helptext, description=helptext, formatter_class=A.HelpFormatter)
    A.common(t)
    A.add_model_args(t, size=size, features=features)
    t.set_defaults(check=check)
    return t


def add_eval_parsers(sub, run) -> None:
    """`discorep eval TASK`: every task runs `run(args)` (cli._cmd_eval), after its own `check`."""
    p = sub.add_parser("eval", help="measure masks and features: objects, foreground, video, knn, linear, "
                                    "linear-seg, overcluster, retrieval, corloc", formatter_class=A.HelpFormatter)
    A.common(p)
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)

    t = _eval_task(tasks, "objects", "object discovery on a COCO-format set: ABO_i, ABO_c, OR (Odin §3.2)",
                   _check_objects)
    t.add_argument("--coco", required=True, type=Path, help="COCO instances json")
    t.add_argument("--images", required=True, type=Path, help="folder of the json's images")
    t.add_argument("--k", type=A.k_list, default="1,2,4,8,16,32,64,128", help="K values (proposals = their sum)")
    t.add_argument("--filter-small", action="store_true",
                   help="drop masks < 100 px at 224 and keep at most 16 per image (Odin Table A.1)")
    add_refine_args(t, "none", "zeros")

    t = _eval_task(tasks, "foreground", "CUB protocol: K=5, Hungarian foreground matching, mean IoU",
                   _check_foreground)
    t.add_argument("--coco", type=Path, help="COCO json: foreground = union of its instances")
    t.add_argument("--masks", type=Path, help="folder of foreground mask PNGs named like the images")
    t.add_argument("--images", required=True, type=Path, help="folder of the images")
    t.add_argument("--k", type=A.positive_int, default=5, help="clusters per image")
    t.add_argument("--oracle", action="store_true",
                   help="ALSO report the upper bound that picks the best cluster by ground truth")
    add_refine_args(t, "none", "zeros")

    t = _eval_task(tasks, "video", "DAVIS label propagation: J, F, J&F (Odin §4.3, DINO protocol)",
                   _check_video, size=480)
    t.add_argument("--davis", required=True, type=Path, help="DAVIS-layout root (JPEGImages/, Annotations/)")
    t.add_argument("--topk", type=A.positive_int, default=5, help="neighbours each pixel takes labels from")
    t.add_argument("--context", type=A.positive_int, default=7, help="previous frames used as context")
    t.add_argument("--radius", type=A.positive_int, default=12, help="spatial neighbourhood radius (feature cells)")
    t.add_argument("--temperature", type=A.positive_float, default=0.7, help="softmax temperature of affinities")
    add_refine_args(t, "none", None)
    t.add_argument("--save-masks", type=Path, default=None,
                   help="write the predictions as DAVIS palette PNGs: DIR/<sequence>/<frame>.png")

    for name, helptext in (("knn", "weighted k-NN classification (k=20, T=0.07, cosine)"),
                           ("linear", "linear probe on frozen global features")):
        t = _eval_task(tasks, name, helptext, _check_labelled, size=224)
        t.add_argument("--train", required=True, type=Path, help="labelled image folder (class sub-folders)")
        t.add_argument("--val", required=True, type=Path, help="labelled image folder (class sub-folders)")
        if name == "knn":
            t.add_argument("--k", type=A.positive_int, default=20, help="neighbours voting")
            t.add_argument("--temperature", type=A.positive_float, default=0.07, help="vote weight temperature")
        else:
            t.add_argument("--epochs", type=A.positive_int, default=100, help="probe training epochs")
            t.add_argument("--lr", type=A.positive_float, default=0.1, help="probe learning rate")
    _add_dense_eval_parsers(tasks)
    p.set_defaults(func=run)


def _check_set(path: Path, flag: str) -> None:
    if path.suffix.lower() == ".json":
        A.check_coco_json(path, flag)
    else:
        A.check_input_dir(path, flag)


def _check_sets(args):
    for name in ("train", "val"):
        if getattr(args, name, None) is not None:
            _check_set(getattr(args, name), f"--{name}")


def _add_dense_set_args(t: argparse.ArgumentParser, name: str) -> None:
    """--<name> PATH (VOC-layout folder or COCO json), --<name>-images, --<name>-split."""
    t.add_argument(f"--{name}", required=True, type=Path,
                   help="VOC-layout folder (JPEGImages/, SegmentationClass/) or a COCO instances .json")
    t.add_argument(f"--{name}-images", type=Path, default=None, help="COCO: image folder (default <json dir>/images)")
    t.add_argument(f"--{name}-split", default=None,
                   help="VOC: ImageSets/Segmentation/<SPLIT>.txt (corloc with Annotations/: ImageSets/Main; "
                        "default: all)")


def _dense_task(tasks, name: str, helptext: str, sets: tuple[str, ...]) -> argparse.ArgumentParser:
    """An eval task reading semantic sets (`--train`/`--val`: VOC folder or COCO json), checked up front."""
    t = _eval_task(tasks, name, helptext, _check_sets)
    for set_name in sets:
        _add_dense_set_args(t, set_name)
    return t


def _add_dense_eval_parsers(tasks) -> None:
    """The dense evaluations (docs/evaluation.md): linear-seg, overcluster, retrieval, corloc."""
    t = _dense_task(tasks, "linear-seg", "linear 1x1-conv head on frozen dense features, mIoU (Leopart/NeCo)",
                    ("train", "val"))
    t.add_argument("--epochs", type=A.positive_int, default=25, help="head training epochs")
    t.add_argument("--lr", type=A.positive_float, default=0.01, help="head learning rate (SGD)")
    t.add_argument("--train-label-size", type=A.positive_int, default=100,
                   help="training targets resized to N x N (NeCo)")
    t.add_argument("--score-size", type=A.positive_int, default=None,
                   help="score at N x N instead of the full label size (NeCo: 100; default: full size)")

    t = _dense_task(tasks, "overcluster", "k-means over all val features, Hungarian / many-to-one mIoU (Leopart)",
                    ("val",))
    t.add_argument("--k", default="classes,100,300,500", help="cluster counts; 'classes' = number of classes")
    t.add_argument("--seeds", type=A.positive_int, default=5, help="k-means seeds (SEED, SEED+1, ...)")

    t = _dense_task(tasks, "retrieval", "dense nearest-neighbour retrieval from a train memory bank (Hummingbird)",
                    ("train", "val"))
    t.add_argument("--k", type=A.positive_int, default=30, help="neighbours per val patch")
    t.add_argument("--temperature", type=A.positive_float, default=0.02, help="softmax temperature of the vote")
    t.add_argument("--bank-size", type=A.positive_int, default=102400,
                   help="memory bank patches (seeded subset beyond)")

    t = _dense_task(tasks, "corloc", "single-object localisation: K=2 foreground box, CorLoc (LOST)", ("val",))
    add_refine_args(t, "none", "zeros")
