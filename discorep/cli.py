"""Command line: argument parsing only; each subcommand calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEMO_CONFIG = "configs/r2o_contrastive_cpu_demo.yaml"


def _cmd_make_data(args: argparse.Namespace) -> int:
    from discorep.data.demo import build_demo_data

    paths = build_demo_data(args.out, force=args.force)
    for name, path in paths.items():
        print(f"{name:14s} {path}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from discorep.engine.config import Config
    from discorep.engine.configio import load_config
    from discorep.engine.train import pretrain

    cfg = load_config(Config, args.config, args.overrides)
    run_dir = pretrain(cfg, resume=args.resume, allow_config_change=args.allow_config_change)
    print(f"run folder: {run_dir}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from discorep.demo import run_demo

    run_demo(config=args.config, data_root=args.data, overrides=args.overrides)
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from discorep.study.runner import run_study
    from discorep.study.spec import load_study

    spec = load_study(args.config, quick=args.quick)
    command = f"discorep study --config {args.config}" + (" --quick" if args.quick else "")
    report = run_study(spec, command=command, report_only=args.report_only)
    print(f"report: {report}")
    return 0


# --prior-* flags of `discorep shard`: (flag, parameter of data.prior_params, type, help)
_PRIOR_FLAGS = (
    ("n-segments", "n_segments", int, "slic: number of superpixels (default 100)"),
    ("compactness", "compactness", float, "slic: compactness (default 10)"),
    ("resize", "resize", "int?", "slic: side of the square copy segmented, or 'none' for full size (default 224)"),
    ("scale", "scale", float, "felzenszwalb: scale (default 1000)"),
    ("sigma", "sigma", float, "felzenszwalb: Gaussian sigma (default 0.8)"),
    ("min-size", "min_size", int, "felzenszwalb: minimum segment size in pixels (default 1000)"),
    ("max-side", "max_side", "int?", "felzenszwalb: shrink longer sides to this first, or 'none' (default)"),
    ("n", "n", int, "grid: n x n cells (default 14)"),
)


def _int_or_none(text: str) -> int | None:
    if text.lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def _cmd_shard(args: argparse.Namespace) -> int:
    from discorep.data.shard_writer import write_shards
    from discorep.errors import UsageError

    params = {name: getattr(args, f"prior_{name}") for _, name, _, _ in _PRIOR_FLAGS
              if hasattr(args, f"prior_{name}")}
    if params and args.prior == "none":
        given = ", ".join(f"--prior-{flag}" for flag, name, _, _ in _PRIOR_FLAGS if name in params)
        raise UsageError(f"{given} given without --prior (slic, felzenszwalb or grid)")
    if args.shard_size < 1:
        raise UsageError(f"--shard-size must be >= 1, got {args.shard_size}")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    s = write_shards(args.images, args.out, coco=args.coco, shard_size=args.shard_size, prior=args.prior,
                     prior_params=params, workers=args.workers)
    print(f"{s.total} images in {s.shards} shards under {s.out} ({s.written} written, {s.reused} kept from "
          f"an earlier run); train with data.kind=shards data.shards={s.out}")
    if s.skipped:
        print(f"skipped {len(s.skipped)} unreadable image(s), listed with reasons in {s.out / 'skipped.txt'}")
    return 0


def _cmd_discover(args: argparse.Namespace) -> int:
    from discorep.eval.discover import run_discover

    run_discover(checkpoint=args.checkpoint, images=args.images, out=args.out, ks=args.k, size=args.size,
                 features=args.features, overlay_k=args.overlay_k, device=args.device,
                 batch_size=args.batch_size, seed=args.seed, refine=args.refine, superpixels=args.superpixels,
                 compactness=args.compactness, padding=args.padding)
    return 0


def _add_refine_args(p: argparse.ArgumentParser, refine: str, padding: str | None) -> None:
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


def _cmd_eval(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"discorep.eval.{args.task}")
    options = {k: v for k, v in vars(args).items() if k not in ("func", "command", "task", "verbose")}
    module.run(**options)
    return 0


def _cmd_dense_eval(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"discorep.eval.{args.task.replace('-', '_')}")
    options = {k: v for k, v in vars(args).items() if k not in ("func", "command", "task", "verbose")}
    module.run(**options)
    return 0


def _add_dense_set_args(t: argparse.ArgumentParser, name: str) -> None:
    """--<name> PATH (VOC-layout folder or COCO json), --<name>-images, --<name>-split."""
    t.add_argument(f"--{name}", required=True, type=Path,
                   help="VOC-layout folder (JPEGImages/, SegmentationClass/) or a COCO instances .json")
    t.add_argument(f"--{name}-images", type=Path, default=None, help="COCO: image folder (default <json dir>/images)")
    t.add_argument(f"--{name}-split", default=None,
                   help="VOC: ImageSets/Segmentation/<SPLIT>.txt (corloc with Annotations/: ImageSets/Main; default: all)")


def _add_dense_eval_parsers(tasks) -> None:
    """The dense evaluations (docs/evaluation.md): linear-seg, overcluster, retrieval, corloc."""
    t = tasks.add_parser("linear-seg", help="linear 1x1-conv head on frozen dense features, mIoU (Leopart/NeCo)")
    _add_model_args(t, size=448, features="c5")
    _add_dense_set_args(t, "train")
    _add_dense_set_args(t, "val")
    t.add_argument("--epochs", type=int, default=25)
    t.add_argument("--lr", type=float, default=0.01)
    t.add_argument("--train-label-size", type=int, default=100, help="training targets resized to N x N (NeCo)")
    t.add_argument("--score-size", type=int, default=None,
                   help="score at N x N instead of the full label size (NeCo: 100; default: full size)")
    t.set_defaults(func=_cmd_dense_eval)

    t = tasks.add_parser("overcluster", help="k-means over all val features, Hungarian / many-to-one mIoU (Leopart)")
    _add_model_args(t, size=448, features="c5")
    _add_dense_set_args(t, "val")
    t.add_argument("--k", default="classes,100,300,500", help="cluster counts; 'classes' = number of classes")
    t.add_argument("--seeds", type=int, default=5, help="k-means seeds (SEED, SEED+1, ...)")
    t.set_defaults(func=_cmd_dense_eval)

    t = tasks.add_parser("retrieval", help="dense nearest-neighbour retrieval from a train memory bank (Hummingbird)")
    _add_model_args(t, size=448, features="c5")
    _add_dense_set_args(t, "train")
    _add_dense_set_args(t, "val")
    t.add_argument("--k", type=int, default=30, help="neighbours per val patch")
    t.add_argument("--temperature", type=float, default=0.02, help="softmax temperature of the vote")
    t.add_argument("--bank-size", type=int, default=102400, help="memory bank patches (seeded subset beyond)")
    t.set_defaults(func=_cmd_dense_eval)

    t = tasks.add_parser("corloc", help="single-object localisation: K=2 foreground box, CorLoc (LOST)")
    _add_model_args(t, size=448, features="c5")
    _add_dense_set_args(t, "val")
    _add_refine_args(t, "none", "zeros")
    t.set_defaults(func=_cmd_dense_eval)


def _cmd_export(args: argparse.Namespace) -> int:
    from discorep.export import export_backbone

    path = export_backbone(checkpoint=args.checkpoint, to=args.to, out=args.out)
    print(f"wrote {path}")
    return 0


def _add_model_args(p: argparse.ArgumentParser, size: int = 448, features: str = "c5") -> None:
    p.add_argument("--checkpoint", required=True, help="a pretraining checkpoint, or random:<arch>[:<seed>] (e.g. random:resnet18)")
    p.add_argument("--size", type=int, default=size, help="images are resized to SIZE x SIZE")
    p.add_argument("--features", choices=("c4", "c5", "fpn"), default=features, help="feature map to use")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--out", type=Path, default=None, help="JSON file for every number and the settings")


def _add_eval_parsers(sub) -> None:
    p = sub.add_parser("eval", help="measure masks and features: objects, foreground, video, knn, linear, "
                                    "linear-seg, overcluster, retrieval, corloc")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)

    t = tasks.add_parser("objects", help="object discovery on a COCO-format set: ABO_i, ABO_c, OR (Odin §3.2)")
    _add_model_args(t)
    t.add_argument("--coco", required=True, type=Path, help="COCO instances json")
    t.add_argument("--images", required=True, type=Path, help="folder of the json's images")
    t.add_argument("--k", default="1,2,4,8,16,32,64,128", help="K values (proposals = their sum)")
    t.add_argument("--filter-small", action="store_true",
                   help="drop masks < 100 px at 224 and keep at most 16 per image (Odin Table A.1)")
    _add_refine_args(t, "none", "zeros")

    t = tasks.add_parser("foreground", help="CUB protocol: K=5, Hungarian foreground matching, mean IoU")
    _add_model_args(t)
    t.add_argument("--coco", type=Path, help="COCO json: foreground = union of its instances")
    t.add_argument("--masks", type=Path, help="folder of foreground mask PNGs named like the images")
    t.add_argument("--images", required=True, type=Path)
    t.add_argument("--k", type=int, default=5)
    t.add_argument("--oracle", action="store_true",
                   help="ALSO report the upper bound that picks the best cluster by ground truth")
    _add_refine_args(t, "none", "zeros")

    t = tasks.add_parser("video", help="DAVIS label propagation: J, F, J&F (Odin §4.3, DINO protocol)")
    _add_model_args(t, size=480, features="c5")
    t.add_argument("--davis", required=True, type=Path, help="DAVIS-layout root (JPEGImages/, Annotations/)")
    t.add_argument("--topk", type=int, default=5)
    t.add_argument("--context", type=int, default=7, help="previous frames used as context")
    t.add_argument("--radius", type=int, default=12, help="spatial neighbourhood radius (feature cells)")
    t.add_argument("--temperature", type=float, default=0.7)
    _add_refine_args(t, "none", None)
    t.add_argument("--save-masks", type=Path, default=None,
                   help="write the predictions as DAVIS palette PNGs: DIR/<sequence>/<frame>.png")

    for name, helptext in (("knn", "weighted k-NN classification (k=20, T=0.07, cosine)"),
                           ("linear", "linear probe on frozen global features")):
        t = tasks.add_parser(name, help=helptext)
        _add_model_args(t, size=224, features="c5")
        t.add_argument("--train", required=True, type=Path, help="labelled image folder (class sub-folders)")
        t.add_argument("--val", required=True, type=Path, help="labelled image folder (class sub-folders)")
        if name == "knn":
            t.add_argument("--k", type=int, default=20)
            t.add_argument("--temperature", type=float, default=0.07)
        else:
            t.add_argument("--epochs", type=int, default=100)
            t.add_argument("--lr", type=float, default=0.1)
    _add_dense_eval_parsers(tasks)
    p.set_defaults(func=_cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discorep",
        description="Object-centric self-supervised pretraining: discover objects, learn to represent them.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("pretrain", help="pretrain a backbone (BYOL, DetCon, Odin, R2O); works under torchrun")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/r2o_cpu_demo.yaml")
    p.add_argument("--resume", default=None, help="'auto' (latest checkpoint of the run folder) or a checkpoint path")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even if the config differs from the checkpoint's (the differing keys are listed)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.batch_size=64")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("make-data", help="generate the demo/test data (scenes, videos, photos); no network")
    p.add_argument("--out", default="data/demo", type=Path)
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    p.set_defaults(func=_cmd_make_data)

    p = sub.add_parser("study", help="pretrain several methods under one budget, evaluate all, write a report")
    p.add_argument("--config", required=True, help="study YAML, e.g. configs/study_cpu.yaml")
    p.add_argument("--quick", action="store_true", help="the small variant in the file's quick: section")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report from the finished runs and list the missing ones")
    p.set_defaults(func=_cmd_study)

    p = sub.add_parser("shard", help="pack images (+ region priors) into webdataset tar shards for large runs")
    p.add_argument("--images", required=True, type=Path, help="image folder (searched recursively), or the "
                   "folder of the --coco json's images")
    p.add_argument("--coco", type=Path, default=None, help="COCO json: shard its images in its order, ids kept")
    p.add_argument("--out", required=True, type=Path, help="output folder: shard-000000.tar, ..., index.json")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    p.add_argument("--prior", choices=("none", "slic", "felzenszwalb", "grid"), default="none",
                   help="region prior stored with each image (as data.prior)")
    for flag, name, kind, helptext in _PRIOR_FLAGS:
        p.add_argument(f"--prior-{flag}", dest=f"prior_{name}", type=_int_or_none if kind == "int?" else kind,
                       default=argparse.SUPPRESS, metavar="X" if kind is float else "N", help=helptext)
    p.add_argument("--workers", type=int, default=None, help="processes (default: every available core)")
    p.set_defaults(func=_cmd_shard)

    p = sub.add_parser("discover", help="segment every image of a folder with k-means over a network's features")
    p.add_argument("--checkpoint", required=True, help="a pretraining checkpoint, or random:<arch>[:<seed>]")
    p.add_argument("--images", required=True, type=Path, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="output folder: <stem>.npz and <stem>.png per image")
    p.add_argument("--k", default="1,2,4,8,16,32,64,128", help="comma-separated K values")
    p.add_argument("--size", type=int, default=448, help="evaluation size (Odin A.4)")
    p.add_argument("--features", choices=("c4", "c5", "fpn"), default="c5")
    p.add_argument("--overlay-k", type=int, default=None, help="K drawn in the PNG overlay (default: 8 if asked, else the largest)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    _add_refine_args(p, "slic", "replicate")
    p.set_defaults(func=_cmd_discover)

    _add_eval_parsers(sub)

    p = sub.add_parser("export", help="export the online backbone for torchvision, timm, detectron2 or mmseg")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--to", required=True, choices=("torchvision", "timm", "detectron2", "mmseg"))
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("demo", help="the main job: build demo data, pretrain R2O on CPU, write a run folder")
    p.add_argument("--config", default=DEMO_CONFIG)
    p.add_argument("--data", default="data/demo", type=Path)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    from discorep.errors import describe, user_errors

    try:
        return args.func(args)
    except user_errors() as err:
        if args.verbose:
            raise
        print(f"error: {describe(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
