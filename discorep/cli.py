"""Command line: argument parsing only; each subcommand calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEMO_CONFIG = "configs/r2o_cpu_demo.yaml"


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
