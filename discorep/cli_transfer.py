"""`discorep transfer detect|segment`: argument parsing and checking before torch loads.

The flags name the settings users most often need to see and change (norm, trainable stages, which
weights); everything else is the preset's, overridable as `KEY=VALUE` like `pretrain`'s config.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from discorep import cliargs as A
from discorep.errors import UsageError

__all__ = ["add_transfer_parsers"]


def _common(t: argparse.ArgumentParser, task: str) -> None:
    A.common(t)
    t.add_argument("--checkpoint", required=True, help=A.CHECKPOINT_HELP)
    data = "COCO instances .json" if task == "detect" else "COCO instances .json or a VOC-layout folder"
    t.add_argument("--train", required=True, type=Path, help=f"training set: {data}")
    t.add_argument("--val", required=True, type=Path, help=f"validation set: {data}")
    t.add_argument("--train-images", type=Path, default=None, help="images of --train (default: <json dir>/images)")
    t.add_argument("--val-images", type=Path, default=None, help="images of --val (default: <json dir>/images)")
    t.add_argument("--preset", default="cpu",
                   help="protocol preset (configs/transfer/): cpu, " + ("coco_1x_d2, coco_1x_tpu" if task == "detect"
                                                                     else "voc_fcn_30k, cityscapes_fcn") + ", or a YAML file")
    t.add_argument("--iters", type=A.non_negative_int, default=None, help="training iterations (default: the preset's)")
    t.add_argument("--size", type=A.image_size, default=None,
                   help="input size: detection's shorter side (train and test), segmentation's crop (default: the preset's)")
    t.add_argument("--seeds", type=A.positive_int, default=1, help="fine-tune with seeds 0..N-1; N > 1 reports mean and std")
    t.add_argument("--norm", choices=("frozen", "bn", "syncbn"), default=None, help="norm layers (default: the preset's)")
    t.add_argument("--weights", choices=("online", "target"), default=None,
                   help="which pretrained encoder: online, or the EMA target (as SlotCon transfers)")
    t.add_argument("--baseline", choices=("random", "none"), default="random",
                   help="also fine-tune random:<arch> at the same settings (cached per settings) and report the difference")
    t.add_argument("--out", type=Path, default=None,
                   help="result JSON (omitted: <work-dir>/<task>_<preset>_<run>_<checkpoint>.json)")
    t.add_argument("--work-dir", type=Path, default=Path("runs/transfer"),
                   help="checkpoints and finished runs (a run with the same settings, data and seed is read, not redone)")
    t.add_argument("--resume", choices=("auto",), default=None, help="continue interrupted runs from their checkpoints")
    t.add_argument("--device", type=A.device, default=None, help="auto (cuda if available), cpu, cuda")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="preset overrides, e.g. solver.base_lr=0.01")


def add_transfer_parsers(sub, run) -> None:
    p = sub.add_parser("transfer", help="fine-tune the backbone on detection (Mask R-CNN) or segmentation (FCN) "
                       "and score it against random init", formatter_class=A.HelpFormatter)
    A.common(p)
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    t = tasks.add_parser("detect", help="torchvision Mask R-CNN R-FPN on COCO-format data, scored by COCOeval (AP, %)",
                         formatter_class=A.HelpFormatter)
    _common(t, "detect")
    t.add_argument("--no-masks", action="store_true", help="Faster R-CNN: boxes only (no segm scores)")
    t.add_argument("--trainable-layers", type=int, choices=range(6), default=None, metavar="0..5",
                   help="ResNet stages that train, torchvision's count (default: the preset's)")
    t = tasks.add_parser("segment", help="FCN / DeepLabV3 semantic segmentation, scored by mIoU (%%)",
                         formatter_class=A.HelpFormatter)
    _common(t, "segment")
    t.add_argument("--head", choices=("fcn", "deeplabv3"), default=None, help="segmentation head (default: the preset's)")
    p.set_defaults(func=run)


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The flags as config overrides, after the positional ones (flags win)."""
    out = list(args.overrides)
    if args.iters is not None:
        if args.iters == 0:
            raise UsageError("--iters 0 trains nothing; to score a backbone without fine-tuning use `discorep eval`")
        out.append(f"solver.iters={args.iters}")
    if args.size is not None:
        if args.task == "detect":
            out += [f"input.train_sizes=[{args.size}]", f"input.test_size={args.size}",
                    f"input.max_size={round(args.size * 5 / 3)}"]
        else:
            out.append(f"input.crop_size={args.size}")
    for flag, key in (("norm", "model.norm"), ("weights", "model.weights"), ("device", "device"),
                      ("trainable_layers", "model.trainable_layers"), ("head", "model.head")):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    if getattr(args, "no_masks", False):
        out.append("model.masks=false")
    return out


def checkpoint_tag(checkpoint: str) -> str:
    """A file-name-safe name of the checkpoint for the default --out: `<run>_step_XXXXXXXX` or `random-<arch>`."""
    if checkpoint.startswith("random:"):
        return checkpoint.replace(":", "-")
    path = Path(checkpoint)
    run = path.parent.parent.name if path.parent.name == "checkpoints" else path.parent.name
    return f"{run}_{path.stem}" if run else path.stem


def check_inputs(args: argparse.Namespace) -> None:
    for flag in ("train", "val"):
        path = getattr(args, flag)
        if path.suffix == ".json":
            A.check_coco_json(path, f"--{flag}")
        elif args.task == "detect":
            raise UsageError(f"--{flag} {path}: detection reads COCO instances .json files")
        else:
            A.check_input_dir(path, f"--{flag}")
    for flag in ("train_images", "val_images"):
        if getattr(args, flag) is not None:
            A.check_input_dir(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.out is not None:
        A.check_writable_file(args.out, "--out")
    A.check_writable_dir(args.work_dir, "--work-dir")
