"""Argument types and checks for the CLI, all without torch: a bad value is one line within a second.

Two kinds: argparse `type=` callables (a bad value makes argparse print the usage line and exit 2) and
`check_*` functions, run before any heavy import, which raise `UsageError` naming the flag.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from discorep.errors import UsageError
from discorep.runs import ensure_writable_dir

MIN_SIZE = 32  # the coarsest feature map (C5) has stride 32: smaller inputs have no feature grid


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, except where there is nothing to say (flags, required options, None)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.required or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """A bad argument is one line naming it (argparse would print the whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


# --prior-* flags of `discorep shard`: (flag, parameter of data.prior_params, type, help, the prior's default).
# Unset flags are left out (default=SUPPRESS), so the prior's own default applies; its value is shown here by
# hand in the formatter's words (tests/reliability/test_help_defaults.py checks it against the prior registry).
PRIOR_FLAGS = (
    ("n-segments", "n_segments", int, "slic: number of superpixels", 100),
    ("compactness", "compactness", float, "slic: compactness", 10.0),
    ("resize", "resize", "int?", "slic: side of the square copy segmented, or 'none' for full size", 224),
    ("scale", "scale", float, "felzenszwalb: scale", 1000.0),
    ("sigma", "sigma", float, "felzenszwalb: Gaussian sigma", 0.8),
    ("min-size", "min_size", int, "felzenszwalb: minimum segment size in pixels", 1000),
    ("max-side", "max_side", "int?", "felzenszwalb: shrink longer sides to this first, or 'none'", None),
    ("n", "n", int, "grid: n x n cells", 14),
)


def prior_flag_help(helptext: str, default) -> str:
    """A --prior-* flag's help with its default as `HelpFormatter` shows other defaults."""
    return f"{helptext} (default: {'none' if default is None else default})"


def int_or_none(text: str) -> int | None:
    if text.lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def positive_int(text: str) -> int:
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a positive number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, got {text}")
    return value


def image_size(text: str) -> int:
    value = _number(text, int, "an integer")
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_SIZE} (the networks' coarsest feature map has "
                                         f"stride 32, so smaller images have no feature grid), got {text}")
    return value


def k_list(text: str) -> list[int]:
    """'1,2,4' → [1, 2, 4]: every K a positive integer, at least one."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not re.fullmatch(r"\d+", p) or int(p) < 1 for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 1,2,4,8, got {text!r}")
    return [int(p) for p in parts]


def device(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


# --------------------------------------------------------------------------------------------- checks


def check_input_dir(path: Path, flag: str) -> None:
    if not path.exists():
        raise UsageError(f"{flag} {path}: no such folder")
    if not path.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a folder")


def check_input_file(path: Path, flag: str) -> None:
    if not path.exists():
        raise UsageError(f"{flag} {path}: no such file")
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder, not a file")


def check_coco_json(path: Path, flag: str = "--coco") -> None:
    """A COCO file is a JSON object: refuse an image or other binary file before anything loads it."""
    check_input_file(path, flag)
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot read it ({err.strerror or err})") from None
    try:
        text = head.decode("utf-8-sig", errors="strict" if len(head) < 4096 else "ignore")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text or not text.lstrip().startswith("{"):
        raise UsageError(f"{flag} {path}: not a COCO json file (it does not start with '{{'); pass the "
                         "annotations file, e.g. annotations/instances_val2017.json")


def check_writable_dir(path: Path, flag: str) -> None:
    """Make sure output folder `path` exists (created if needed) and accepts files."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"cannot write {flag} {path}: it is a file, not a folder; pick a folder name")
    try:
        ensure_writable_dir(path)
    except OSError as err:
        raise UsageError(f"cannot write {flag} {path}: {err.strerror or err}") from None


def check_writable_file(path: Path, flag: str) -> None:
    """Make sure output file `path` can be written (its folder is created if needed); nothing is left behind."""
    if path.is_dir():
        raise UsageError(f"cannot write {flag} {path}: it is a folder; give a file name")
    folder = path.parent
    try:
        ensure_writable_dir(folder)
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as err:
        raise UsageError(f"cannot write {flag} {path}: {err.strerror or err}") from None


# `discorep export --write-config`: the transfer protocols of each toolkit's config, the default first. Their
# settings and sources are in discorep/export/toolkit_configs.py; the names live here, torch-free, so that a
# wrong --protocol is one line before anything loads.
CONFIG_PROTOCOLS = {"detectron2": ("coco_1x_d2", "coco_1x_tpu"), "mmseg": ("voc_fcn_30k", "cityscapes_fcn")}


def check_config_protocol(to: str, write_config: bool, protocol: str | None) -> str | None:
    """The protocol whose config `discorep export` writes (None: no config); UsageError for a flag that
    does not fit --to."""
    if not write_config:
        if protocol is not None:
            raise UsageError(f"--protocol {protocol} chooses the config that --write-config writes: "
                             "add --write-config")
        return None
    if to not in CONFIG_PROTOCOLS:
        raise UsageError("--write-config writes detectron2/mmseg configs; torchvision users: "
                         "`discorep transfer detect` fine-tunes in discorep")
    valid = CONFIG_PROTOCOLS[to]
    if protocol is not None and protocol not in valid:
        raise UsageError(f"--protocol {protocol}: not a {to} protocol; --to {to} takes {valid[0]} (default), "
                         f"{', '.join(valid[1:])}")
    return protocol or valid[0]


CHECKPOINT_HELP = ("a checkpoint file, a run folder (its latest checkpoint, e.g. runs/r2o_cpu_demo), "
                   "or random:<arch>[:<seed>] (e.g. random:resnet18)")


def common(p: argparse.ArgumentParser) -> None:
    """--debug / -v on every subcommand too, so they work before or after its name."""
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback of an error (also DISCOREP_DEBUG=1)")


SIZE_HELP = "images are resized to SIZE x SIZE (>= 32)"
SEED_HELP = "seed of the evaluation's random draws (recorded in the JSON)"


def add_model_args(p: argparse.ArgumentParser, size: int = 448, features: str = "c5", size_help: str = SIZE_HELP,
                   seed_help: str = SEED_HELP) -> None:
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--size", type=image_size, default=size, help=size_help)
    p.add_argument("--features", choices=("c4", "c5", "fpn"), default=features, help="feature map to use")
    p.add_argument("--device", type=device, default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--out", type=Path, default=None, help="JSON file for every number and the settings")
