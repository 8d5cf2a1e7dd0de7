"""Training throughput of each method against the ceiling of its backbone, measured in one run.

    python benchmarks/throughput.py --arch resnet18 --batch 16 --size 96 --steps 5 --threads 1
    python benchmarks/throughput.py --arch resnet50 --batch 32 --size 224 --device cuda --precision bf16

Ceiling: the bare backbone (the same torchvision ResNet, same norm layers) on the same two views per
image BYOL uses, forward and backward of a trivial loss, no heads, no target network, no optimizer.
It is timed on the same pre-loaded batches as the methods (`benchmarks/step_time.py` times those:
forward + backward + optimizer + EMA), twice (before and after the methods; the mean is the ceiling
and the spread says how much the machine drifted during the run). Images/s counts images (each one
two views), like the engine's `img_per_s`. The issue's target is ≥ 70 % of the ceiling.

BYOL itself cannot reach 100 %: besides the online forward + backward on both views (the ceiling) it
runs the EMA target forward on both views (a forward is about a third of forward + backward, so the
bound is ~75 %), the heads, LARS and the EMA update.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.step_time import (
    METHODS,
    _device_name,
    _sync,
    add_common_args,
    make_config,
    resolve_run,
    time_data,
    time_steps,
)
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine import builders
from discorep.engine.config import Config
from discorep.models.backbones import Encoder

TARGET = 0.70


def time_ceiling(cfg: Config, batches: list[dict], device: torch.device, warmup: int) -> dict:
    """Median ms of forward + backward of the bare backbone on cat(view1, view2) of each batch."""
    torch.manual_seed(0)
    enc = Encoder(cfg.model.arch, norm=cfg.model.norm).to(device)
    if cfg.model.channels_last:
        enc = enc.to(memory_format=torch.channels_last)
    if cfg.model.compile != "none":  # the ceiling gets the same compilation as the methods' encoders
        enc.compile(mode=cfg.model.compile)
    enc.train()
    dtype = {"bf16": torch.bfloat16, "fp32": None}[cfg.train.precision]
    steps = []
    for i, batch in enumerate(batches):
        b = builders.to_device(batch, device)
        _sync(device)
        tic = time.perf_counter()
        both = torch.cat([b["view1"], b["view2"]])
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = enc(both)["c5"]  # the map BYOL pools
        out.float().mean().backward()
        enc.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            steps.append((time.perf_counter() - tic) * 1000.0)
    if not steps:
        raise ValueError("no timed steps: need --steps >= 1")
    return {"ms_per_step": statistics.median(steps), "steps_ms": steps}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, steps=5, warmup=1, workers=0, workers_help="DataLoader workers that pre-load the batches")
    p.add_argument("--methods", default="byol,detcon,r2o",
                   help=f"comma-separated, from {', '.join(METHODS)} (byol is always added)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "benchmarks/throughput.py", *(sys.argv[1:] if argv is None else argv)])
    names, device, dist = resolve_run(args, [args.methods])
    # step_time's extra step is a profiled one, excluded from its timings (and skipped by the ceiling).
    n_batches = args.steps + args.warmup + 1
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_scenes(tmp / "scenes", args.batch * (n_batches + 1), seed=0,
                    image_size=(args.image_size, args.image_size))
        batches_by_prior: dict[bool, list] = {}
        cfgs = {n: make_config(n, args, tmp / "scenes" / "images", tmp / "cache") for n in names}
        for name, cfg in cfgs.items():
            with_prior = cfg.data.prior != "none"
            if with_prior not in batches_by_prior:
                batches_by_prior[with_prior] = time_data(cfg, dist, n_batches)[0][:n_batches]
        views = batches_by_prior[False][: n_batches - 1]
        first = time_ceiling(cfgs["byol"], views, device, args.warmup)
        for name, cfg in cfgs.items():
            r = time_steps(cfg, batches_by_prior[cfg.data.prior != "none"], device, args.warmup)
            results[name] = {"ms_per_step": r["ms_per_step"], "steps_ms": r["steps_ms"]}
        last = time_ceiling(cfgs["byol"], views, device, args.warmup)
    ceiling_ms = (first["ms_per_step"] + last["ms_per_step"]) / 2
    ceiling = {"ms_per_step": ceiling_ms, "images_per_s": args.batch / ceiling_ms * 1000.0,
               "first_ms": first["ms_per_step"], "last_ms": last["ms_per_step"],
               "drift": max(first["ms_per_step"], last["ms_per_step"]) / min(first["ms_per_step"], last["ms_per_step"])}
    for r in results.values():
        r["images_per_s"] = args.batch / r["ms_per_step"] * 1000.0
        r["ratio_to_ceiling"] = r["images_per_s"] / ceiling["images_per_s"]
        r["meets_target"] = bool(r["ratio_to_ceiling"] >= TARGET)
    env = {"device": _device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "command": command}
    out = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "environment": env, "ceiling": ceiling, "results": results, "target": TARGET}
    report(out, args)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    return out


def report(out: dict, args) -> None:
    env, c = out["environment"], out["ceiling"]
    print(f"device={env['device']} torch={env['torch']} threads={env['threads']} arch={args.arch} "
          f"batch={args.batch} size={args.size} precision={args.precision} compile={args.compile}")
    print("command: " + env["command"])
    print(f"{'':<22}{'ms/step':>9}{'images/s':>10}{'of ceiling':>12}")
    print(f"{'backbone fwd+bwd':<22}{c['ms_per_step']:>9.1f}{c['images_per_s']:>10.2f}{'100 %':>12}"
          f"   (before {c['first_ms']:.1f} / after {c['last_ms']:.1f} ms)")
    for name, r in out["results"].items():
        print(f"{name:<22}{r['ms_per_step']:>9.1f}{r['images_per_s']:>10.2f}{100 * r['ratio_to_ceiling']:>10.1f} %"
              f"   target >= {100 * TARGET:.0f} %: {'PASS' if r['meets_target'] else 'MISS'}")
    if c["drift"] > 1.2:
        print(f"WARNING: the ceiling changed {c['drift']:.2f}x between the start and the end of the run: "
              "another process competed for the cores; rerun on a quiet machine or with --threads 1.")


if __name__ == "__main__":
    main()
