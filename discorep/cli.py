"""Command line: argument parsing and checking only; each subcommand calls one library function.

Arguments are parsed and checked (`discorep.cliargs`, no torch) before any heavy import, so a mistake is
one line within a second. Every error reaching `main` is one `error:` line; `--debug` (or
DISCOREP_DEBUG=1) shows the traceback instead. The `eval` tasks come from their registry
(`discorep/eval/tasks/`, one file each; `cli_eval.py` builds their parsers).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from discorep import cliargs as A
from discorep.cli_eval import add_eval_parsers, add_refine_args, own_arguments
from discorep.cli_transfer import add_transfer_parsers
from discorep.errors import Interrupted, UsageError

DEMO_CONFIG = "r2o_contrastive_cpu_demo.yaml"  # bundled with the package (discorep/configs)


# ------------------------------------------------------------------------------------------- commands


def _cmd_make_data(args: argparse.Namespace) -> int:
    A.check_writable_dir(args.out, "--out")
    from discorep.apps.demodata.build import build_demo_data

    paths = build_demo_data(args.out, force=args.force)
    for name, path in paths.items():
        print(f"{name:14s} {path}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from discorep.configfiles import find_config

    if args.overwrite and args.resume:
        raise UsageError("--overwrite starts afresh and --resume continues: give one of them")
    # Argument mistakes first, before torch loads (the engine's modules import it).
    config = find_config(args.config) if args.config is not None else None
    folder, overrides = _resumed_run(args) if config is None else (None, args.overrides)
    from discorep.engine.config import Config
    from discorep.engine.configio import load_config, to_dict

    if config is not None:
        cfg = load_config(Config, config, args.overrides)
    else:
        cfg = load_config(Config, folder / "config.yaml", overrides)
        if (Path(cfg.train.out_dir) / cfg.train.name).resolve() != folder.resolve():  # the folder was moved
            cfg = load_config(Config, folder / "config.yaml",
                              [*overrides, f"train.out_dir={folder.parent}", f"train.name={folder.name}"])
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False), end="")
        return 0
    from discorep.engine.train import pretrain

    # Rank 0 prints the summary (run folder, checkpoint, next commands); the other ranks print nothing.
    pretrain(cfg, resume=args.resume, allow_config_change=args.allow_config_change, overwrite=args.overwrite,
             report=True)
    return 0


def _resumed_run(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """`pretrain --resume RUN` without --config: the run folder, whose config.yaml is the config, and the
    overrides, which may only change what leaves the training unchanged (`runs.RESUME_SAFE_KEYS`)."""
    from discorep.runs import RESUME_SAFE_KEYS, run_folder_of

    if args.resume in (None, "auto"):
        raise UsageError("pretrain needs --config FILE, or --resume RUN_FOLDER (which reads the run's own "
                         "config.yaml), e.g. --resume runs/mine")
    folder = run_folder_of(args.resume)
    if folder is None or not (folder / "config.yaml").is_file():
        raise UsageError(f"--resume {args.resume}: not a run folder with a config.yaml; give the run's config "
                         "with --config FILE")
    keys = [o.split("=", 1)[0].strip() for o in args.overrides]
    placed = [k for k in keys if k in ("train.out_dir", "train.name")]
    if placed:
        raise UsageError(f"--resume {args.resume}: the run folder fixes {', '.join(placed)}; drop the override")
    unsafe = [k for k in keys if k not in RESUME_SAFE_KEYS]
    if unsafe and not args.allow_config_change:
        raise UsageError(f"--resume {args.resume}: {', '.join(unsafe)} would change what the run trains (resume-safe: "
                         f"{', '.join(RESUME_SAFE_KEYS)}); pass --allow-config-change to resume anyway")
    return folder, list(args.overrides)


def _cmd_demo(args: argparse.Namespace) -> int:
    from discorep.configfiles import find_config

    config = find_config(args.config)
    from discorep.apps.demo import run_demo

    run_demo(config=str(config), data_root=args.data, overrides=args.overrides)
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from discorep.configfiles import find_config

    config = find_config(args.config)
    from discorep.apps.study.runner import run_study
    from discorep.apps.study.spec import load_study

    spec = load_study(config, quick=args.quick)
    command = f"discorep study --config {args.config}" + (" --quick" if args.quick else "")
    report = run_study(spec, command=command, report_only=args.report_only)
    print(f"report: {report}")
    return 0


def _cmd_shard(args: argparse.Namespace) -> int:
    params = {name: getattr(args, f"prior_{name}") for _, name, _, _, _ in A.PRIOR_FLAGS
              if hasattr(args, f"prior_{name}")}
    if params and args.prior == "none":
        given = ", ".join(f"--prior-{flag}" for flag, name, _, _, _ in A.PRIOR_FLAGS if name in params)
        raise UsageError(f"{given} given without --prior (slic, felzenszwalb or grid)")
    A.check_input_dir(args.images, "--images")
    if args.coco is not None:
        A.check_coco_json(args.coco)
    A.check_writable_dir(args.out, "--out")
    from discorep.data.shard_writer import write_shards

    s = write_shards(args.images, args.out, coco=args.coco, shard_size=args.shard_size, prior=args.prior,
                     prior_params=params, workers=args.workers)
    print(f"{s.total} images in {s.shards} shards under {s.out} ({s.written} written, {s.reused} kept from "
          f"an earlier run); train with data.kind=shards data.shards={s.out}")
    if s.skipped:
        print(f"skipped {len(s.skipped)} unreadable image(s), listed with reasons in {s.out / 'skipped.txt'}")
    return 0


def _check_model_args(args: argparse.Namespace) -> None:
    """What every command taking --checkpoint shares: the checkpoint (a run folder = its latest) and --out."""
    from discorep.runs import resolve_checkpoint

    args.checkpoint = resolve_checkpoint(args.checkpoint)
    if getattr(args, "out", None) is not None and args.command == "eval":
        A.check_writable_file(args.out, "--out")


def _cmd_discover(args: argparse.Namespace) -> int:
    from discorep.omp import prefer_passive_waits

    prefer_passive_waits()  # before torch loads: the writer and superpixel threads share the cores (omp.py)
    _check_model_args(args)
    A.check_input_dir(args.images, "--images")
    A.check_writable_dir(args.out, "--out")
    from discorep.eval.discover import run_discover

    run_discover(checkpoint=args.checkpoint, images=args.images, out=args.out, ks=args.k, size=args.size,
                 features=args.features, overlay_k=args.overlay_k, device=args.device,
                 batch_size=args.batch_size, seed=args.seed, refine=args.refine, superpixels=args.superpixels,
                 compactness=args.compactness, padding=args.padding, overwrite=args.overwrite)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from discorep.eval.tasks import get_eval

    _check_model_args(args)
    task, options = get_eval(args.task), own_arguments(args)
    if task.check is not None:  # the task's own input checks, still before torch loads
        task.check(options)
    task.run(options)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from discorep.runs import resolve_checkpoint

    protocol = A.check_config_protocol(args.to, args.write_config, args.protocol)
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    A.check_writable_file(args.out, "--out")
    from discorep.export import export_backbone, placeholder_note
    from discorep.export.toolkit_configs import config_path

    path = export_backbone(checkpoint=args.checkpoint, to=args.to, out=args.out, protocol=protocol)
    print(f"wrote {path}")
    if protocol:
        print(f"wrote {config_path(path, args.to)} ({args.to} config, protocol {protocol})")
    note = placeholder_note(args.to)
    if note:
        print(f"note: {note}")
    return 0


def _cmd_transfer(args: argparse.Namespace) -> int:
    from discorep import cli_transfer
    from discorep.runs import resolve_checkpoint

    args.checkpoint = resolve_checkpoint(args.checkpoint)
    cli_transfer.check_inputs(args)
    overrides = cli_transfer.overrides_of(args)
    from discorep.transfer import Inputs, load_transfer_config, print_result, run_transfer

    cfg = load_transfer_config(args.task, args.preset, overrides)
    out = args.out or args.work_dir / f"{args.task}_{cfg.preset}_{cli_transfer.checkpoint_tag(args.checkpoint)}.json"
    inputs = Inputs(*(None if p is None else str(p) for p in (args.train, args.val, args.train_images, args.val_images)))
    result = run_transfer(args.task, cfg, args.checkpoint, inputs, seeds=args.seeds, out=out, work_dir=args.work_dir,
                          resume=args.resume == "auto", baseline=args.baseline == "random")
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print_result(result, out)
    return 0


# -------------------------------------------------------------------------------------------- parsers


def _add_pretrain_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a backbone (BYOL, DetCon, Odin, R2O); works under torchrun",
                       formatter_class=A.HelpFormatter)
    A.common(p)
    p.add_argument("--config", default=None,
                   help="YAML config: a path, or the name of a bundled one (e.g. r2o_cpu_demo.yaml); "
                        "not needed with --resume RUN_FOLDER")
    p.add_argument("--resume", default=None,
                   help="a run folder (its latest checkpoint; without --config it reads the run's config.yaml), "
                        "a checkpoint, or 'auto' (the latest checkpoint of --config's run folder)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even if the config differs from the checkpoint's (the differing keys are listed)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run folder that holds checkpoints: it is renamed <name>.old-<time> first")
    p.add_argument("--print-config", action="store_true",
                   help="print the fully resolved config as YAML and exit (reads no data, writes nothing)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.batch_size=64")
    p.set_defaults(func=_cmd_pretrain)


def _add_shard_parser(sub) -> None:
    p = sub.add_parser("shard", help="pack images (+ region priors) into webdataset tar shards for large runs",
                       formatter_class=A.HelpFormatter)
    A.common(p)
    p.add_argument("--images", required=True, type=Path, help="image folder (searched recursively), or the "
                   "folder of the --coco json's images")
    p.add_argument("--coco", type=Path, default=None, help="COCO json: shard its images in its order, ids kept")
    p.add_argument("--out", required=True, type=Path, help="output folder: shard-000000.tar, ..., index.json")
    p.add_argument("--shard-size", type=A.positive_int, default=1000, help="images per shard")
    p.add_argument("--prior", choices=("none", "slic", "felzenszwalb", "grid"), default="none",
                   help="region prior stored with each image (as data.prior)")
    for flag, name, kind, helptext, default in A.PRIOR_FLAGS:
        p.add_argument(f"--prior-{flag}", dest=f"prior_{name}", type=A.int_or_none if kind == "int?" else kind,
                       default=argparse.SUPPRESS, metavar="X" if kind is float else "N",
                       help=A.prior_flag_help(helptext, default))
    p.add_argument("--workers", type=A.non_negative_int, default=None,
                   help="processes (default: every available core)")
    p.set_defaults(func=_cmd_shard)


def _add_discover_parser(sub) -> None:
    p = sub.add_parser("discover", help="segment every image of a folder with k-means over a network's features",
                       formatter_class=A.HelpFormatter)
    A.common(p)
    p.add_argument("--checkpoint", required=True, help=A.CHECKPOINT_HELP)
    p.add_argument("--images", required=True, type=Path, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder: <stem>.npz and <stem>.png per image (a rerun continues where one stopped; "
                        "one holding results of another checkpoint or other settings is refused)")
    p.add_argument("--overwrite", action="store_true",
                   help="move the --out folder's earlier results aside to <out>.old-<time> first (nothing is deleted)")
    p.add_argument("--k", type=A.k_list, default="1,2,4,8,16,32,64,128", help="comma-separated K values")
    p.add_argument("--size", type=A.image_size, default=448, help="evaluation size (Odin A.4), >= 32")
    p.add_argument("--features", choices=("c4", "c5", "fpn"), default="c5", help="feature map clustered")
    p.add_argument("--overlay-k", type=A.positive_int, default=None,
                   help="K drawn in the PNG overlay (default: 8 if asked, else the largest)")
    p.add_argument("--device", type=A.device, default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=A.positive_int, default=8, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="k-means seed (per image: combined with its path)")
    add_refine_args(p, "slic", "replicate")
    p.set_defaults(func=_cmd_discover)


def build_parser() -> argparse.ArgumentParser:
    parser = A.Parser(
        prog="discorep", formatter_class=A.HelpFormatter,
        description="Object-centric self-supervised pretraining: discover objects, learn to represent them.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also DISCOREP_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_pretrain_parser(sub)

    p = sub.add_parser("make-data", help="generate the demo/test data (scenes, videos, photos); no network",
                       formatter_class=A.HelpFormatter)
    A.common(p)
    p.add_argument("--out", default="data/demo", type=Path, help="output folder")
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    p.set_defaults(func=_cmd_make_data)

    p = sub.add_parser("study", help="pretrain several methods under one budget, evaluate all, write a report",
                       formatter_class=A.HelpFormatter)
    A.common(p)
    p.add_argument("--config", required=True, help="study YAML: a path or a bundled name (e.g. study_cpu.yaml)")
    p.add_argument("--quick", action="store_true", help="the small variant in the file's quick: section")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report from the finished runs and list the missing ones")
    p.set_defaults(func=_cmd_study)

    _add_shard_parser(sub)
    _add_discover_parser(sub)
    add_eval_parsers(sub, _cmd_eval)
    add_transfer_parsers(sub, _cmd_transfer)

    p = sub.add_parser("export", help="export the online backbone for torchvision, timm, detectron2 or mmseg",
                       formatter_class=A.HelpFormatter)
    A.common(p)
    p.add_argument("--checkpoint", required=True, help=A.CHECKPOINT_HELP)
    p.add_argument("--to", required=True, choices=("torchvision", "timm", "detectron2", "mmseg"),
                   help="toolkit whose key names and file format to write")
    p.add_argument("--out", required=True, type=Path, help="file to write (detectron2: *.pkl)")
    p.add_argument("--write-config", action="store_true",
                   help="also write a ready fine-tuning config beside --out (detectron2: <stem>.yaml, "
                        "mmseg: <stem>_config.py): SyncBN, no frozen stage, RGB mean/std, the protocol's schedule")
    p.add_argument("--protocol", default=None,
                   help="the transfer protocol of --write-config (omitted: the first of --to's): " + "; ".join(
                       f"{to}: {' | '.join(names)}" for to, names in A.CONFIG_PROTOCOLS.items()))
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("demo", help="the main job: build demo data, pretrain R2O on CPU, write a run folder",
                       formatter_class=A.HelpFormatter)
    A.common(p)
    p.add_argument("--config", default=DEMO_CONFIG, help="demo config: a path or a bundled name")
    p.add_argument("--data", default="data/demo", type=Path, help="demo data folder (generated if missing)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.set_defaults(func=_cmd_demo)
    return parser


# ----------------------------------------------------------------------------------------------- main


def _setup_logging(verbose: bool) -> None:
    # Under torchrun every rank runs this: only rank 0 logs progress; the others say only what goes wrong.
    rank = int(os.environ.get("RANK", "0") or 0)
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    debug = getattr(args, "debug", False) or os.environ.get("DISCOREP_DEBUG", "") not in ("", "0")
    _setup_logging(verbose)
    if args.command is None:
        parser.print_help()
        return 0
    from discorep.errors import describe, is_user_error

    name = args.command + (f" {args.task}" if getattr(args, "task", None) else "")
    try:
        return args.func(args)
    except KeyboardInterrupt as err:  # exit 128 + signal: 130 for Ctrl-C, 143 for SIGTERM (errors.Terminated)
        if debug:
            raise
        print(f"error: discorep {name} interrupted", file=sys.stderr)
        return 128 + getattr(err, "signum", 2)
    except Interrupted as err:  # stopped cleanly; the message says what was kept and how to continue
        if debug:
            raise
        print(f"error: {describe(err)}", file=sys.stderr)
        return err.exit_status
    except Exception as err:
        if debug:
            raise
        if is_user_error(err):
            print(f"error: {describe(err)}", file=sys.stderr)
            return 2
        print(f"error: discorep {name} failed: {type(err).__name__}: {' '.join(describe(err).split())} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
