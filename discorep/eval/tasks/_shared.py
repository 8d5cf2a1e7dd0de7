"""Arguments and checks several eval tasks share (no torch).

Help texts leave defaults to `cliargs.HelpFormatter`, which appends "(default: X)" from the argument's
own default: one source, printed once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from discorep import cliargs as A


def add_refine_args(p: argparse.ArgumentParser, refine: str, padding: str | None) -> None:
    """--refine and its superpixel options (eval/refine.py); --padding where k-means segments (eval/segment.py)."""
    p.add_argument("--refine", choices=("none", "slic", "felzenszwalb"), default=refine,
                   help="cluster superpixel regions instead of feature cells, so masks follow image edges")
    p.add_argument("--superpixels", type=int, default=256, help="SLIC segment count; Felzenszwalb min_size = "
                   "size^2/(4*N)")
    p.add_argument("--compactness", type=float, default=10.0, help="SLIC compactness")
    if padding is not None:
        p.add_argument("--padding", choices=("zeros", "replicate"), default=padding,
                       help="how the encoder's convolutions pad; replicate removes the frame of segments along "
                            "the border")


# --seed of the tasks that cluster each image by k-means (eval/segment.segment_batch)
KMEANS_SEED_HELP = "k-means seed (per image: combined with the image's index in the set)"


def check_labelled(args) -> None:
    A.check_input_dir(args.train, "--train")
    A.check_input_dir(args.val, "--val")


def add_labelled_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--train", required=True, type=Path, help="labelled image folder (class sub-folders)")
    t.add_argument("--val", required=True, type=Path, help="labelled image folder (class sub-folders)")


# ------------------------------------------- semantic sets (linear-seg, overcluster, retrieval, corloc)


def _check_set(path: Path, flag: str) -> None:
    if path.suffix.lower() == ".json":
        A.check_coco_json(path, flag)
    else:
        A.check_input_dir(path, flag)


def check_sets(args) -> None:
    for name in ("train", "val"):
        if getattr(args, name, None) is not None:
            _check_set(getattr(args, name), f"--{name}")


def add_set_args(t: argparse.ArgumentParser, *names: str, detection: bool = False) -> None:
    """--<name> PATH (VOC-layout folder or COCO json), --<name>-images, --<name>-split, for each name;
    `detection`: a VOC folder may also be a detection set (corloc)."""
    for name in names:
        t.add_argument(f"--{name}", required=True, type=Path,
                       help="VOC-layout folder (JPEGImages/, SegmentationClass/) or a COCO instances .json")
        t.add_argument(f"--{name}-images", type=Path, default=None,
                       help="COCO: image folder (default: <json dir>/images)")
        t.add_argument(f"--{name}-split", default=None,
                       help="VOC: ImageSets/Segmentation/<SPLIT>.txt"
                            + (" (with Annotations/: ImageSets/Main/<SPLIT>.txt)" if detection else "")
                            + "; default: every image")
