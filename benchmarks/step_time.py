"""Time per training step of DetCon, Odin (continuous / cached segments), R2O and the R2O hybrid
against BYOL, on the same backbone, batch, resolution and batches, measured in one run.

    python benchmarks/step_time.py --arch resnet18 --batch 16 --size 96 --steps 10
    python benchmarks/step_time.py --arch resnet50 --batch 32 --size 224 --device cuda --precision bf16

Prints ms/step (median over steps), the ratio to BYOL, and a breakdown: data loading (real DataLoader,
per batch), discovery forward, k-means, alignment, pooling+heads, loss, backward+optimizer+EMA
(torch.profiler record_function scopes). Targets from the issue: R2O and Odin ≤ 1.25× BYOL, Odin
with cached segments ≤ 1.10×. Nothing is asserted: the numbers are what this machine measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from discorep.data.demo import make_scenes  # noqa: E402
from discorep.engine import builders  # noqa: E402
from discorep.engine.config import Config  # noqa: E402
from discorep.engine.configio import from_dict  # noqa: E402
from discorep.engine.distributed import DistInfo  # noqa: E402
from discorep.methods import build_method  # noqa: E402
from discorep.methods.base import StepInfo  # noqa: E402

PHASES = ("discovery_forward", "kmeans", "align", "pool_heads", "loss")
METHODS = {
    "byol": {"method": {"name": "byol", "loss": "byol", "features": "c5"}},
    # BYOL on the same ResNet+FPN as Odin (global pool of the stride-4 FPN map): isolates what Odin's
    # discovery costs from what its FPN features cost.
    "byol_fpn": {"method": {"name": "byol", "loss": "byol", "features": "fpn"}, "model": {"fpn": True}},
    "detcon": {"method": {"name": "detcon", "loss": "contrastive", "features": "c5"},
               "data": {"prior": "slic"}},
    "odin": {"method": {"name": "odin", "loss": "contrastive", "features": "fpn", "K": 16}, "model": {"fpn": True}},
    "odin_cached": {"method": {"name": "odin", "loss": "contrastive", "features": "fpn", "K": 16,
                               "discovery_update": "discrete", "discrete_every_epochs": 100},
                    "model": {"fpn": True}},
    "r2o": {"method": {"name": "r2o", "loss": "byol", "features": "c5", "K0": 128, "t_alpha": 40},
            "data": {"prior": "slic"}},
    "hybrid": {"method": {"name": "r2o", "loss": "byol", "features": "c5", "K0": 128, "t_alpha": 40,
                          "region_network": "discovery"}, "data": {"prior": "slic"}},
}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_config(name: str, args, data_root: Path, cache: Path) -> Config:
    base = {"data": {"root": str(data_root), "num_workers": args.workers, "prior_cache": str(cache),
                     "prior_size": args.size},
            "views": {"size": args.size, "spanning_size": 2 * args.size, "raw_size": args.size},
            "model": {"arch": args.arch, "channels_last": args.device == "cuda"},
            "train": {"batch_size": args.batch, "device": args.device, "precision": args.precision,
                      "progress": False, "epochs": 300}}
    return from_dict(Config, _merge(base, METHODS[name]))


def time_data(cfg: Config, dist: DistInfo, batches: int):
    dataset = builders.build_dataset(cfg, dist)
    loader, _ = builders.build_loader(cfg, dataset, dist, start_step=0, total_steps=batches + 1)
    it = iter(loader)
    first = next(it)  # worker start-up is not per-batch cost
    times, kept = [], [first]
    tic = time.perf_counter()
    for batch in it:
        toc = time.perf_counter()
        times.append(toc - tic)
        kept.append(batch)
        tic = time.perf_counter()
    return kept, statistics.median(times) if times else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(cfg: Config, batches: list[dict], device: torch.device, warmup: int):
    torch.manual_seed(0)
    method = build_method(cfg).to(device)
    if cfg.model.channels_last:
        method = method.to(memory_format=torch.channels_last)
    opt = builders.build_optimizer_for(cfg, method.online_modules())
    dtype = {"bf16": torch.bfloat16, "fp32": None}[cfg.train.precision]
    if getattr(method, "cache", None) is not None:
        # Steady state between two discrete copies: every image already has cached segments. (The
        # first epoch after a copy fills the cache at the cost of the continuous mode.)
        for batch in batches:
            method.segments(builders.to_device(batch, device), StepInfo(0, 0.0, cfg.train.epochs, 0))
    times = []
    prof_phases: dict[str, float] = {}
    for i, batch in enumerate(batches):
        b = builders.to_device(batch, device)
        info = StepInfo(step=i, epoch=0.0, total_epochs=cfg.train.epochs, seed=0)
        profile = i == len(batches) - 1
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] +
                                      ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []))
        ctx = prof if profile else torch.autograd.profiler.record_function("step")
        _sync(device)
        tic = time.perf_counter()
        with ctx:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss, _ = method(b, info)
            opt.zero_grad(set_to_none=True)
            with torch.profiler.record_function("discorep/backward_optimizer"):
                loss.backward()
                opt.step()
                method.after_step(info, 0.99, 1000)
            _sync(device)
        elapsed = time.perf_counter() - tic
        if i >= warmup and not profile:
            times.append(elapsed)
        if profile:
            for evt in prof.key_averages():
                if evt.key.startswith("discorep/"):
                    t = evt.device_time_total if device.type == "cuda" else evt.cpu_time_total
                    prof_phases[evt.key.split("/", 1)[1]] = t / 1000.0 / max(evt.count, 1) * evt.count
    return statistics.median(times), prof_phases


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet50"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.methods.split(",")
    if "byol" not in names:
        names = ["byol", *names]
    device = torch.device(args.device)
    dist = DistInfo(0, 1, 0, device)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_scenes(tmp / "scenes", max(64, args.batch * (args.steps + 2)), seed=0, image_size=(192, 192))
        batches_by_prior: dict[bool, tuple] = {}
        for name in names:
            cfg = make_config(name, args, tmp / "scenes" / "images", tmp / "cache")
            with_prior = cfg.data.prior != "none"
            if with_prior not in batches_by_prior:  # same images and views for every method
                batches_by_prior[with_prior] = time_data(cfg, dist, args.steps + args.warmup + 1)
            batches, data_s = batches_by_prior[with_prior]
            step_s, phases = time_steps(cfg, batches[: args.steps + args.warmup + 1], device, args.warmup)
            results[name] = {"ms_per_step": step_s * 1000, "data_ms_per_batch": data_s * 1000, "phases_ms": phases}
    base = results["byol"]["ms_per_step"]
    for r in results.values():
        r["ratio_to_byol"] = r["ms_per_step"] / base
    results["byol"]["ratio_to_byol"] = 1.0
    report(results, args, argv)
    if args.out:
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "results": results},
                                       indent=2))
    return results


def report(results: dict, args, argv) -> None:
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} arch={args.arch} "
          f"batch={args.batch} size={args.size} precision={args.precision}")
    print("command: python benchmarks/step_time.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    cols = ("data", *PHASES, "backward_optimizer")
    print(f"{'method':<12}{'ms/step':>9}{'x BYOL':>8}  " + "".join(f"{c[:11]:>12}" for c in cols))
    for name, r in results.items():
        ph = r["phases_ms"]
        cells = [r["data_ms_per_batch"]] + [ph.get(c, 0.0) for c in cols[1:]]
        print(f"{name:<12}{r['ms_per_step']:>9.1f}{r['ratio_to_byol']:>8.2f}  " + "".join(f"{v:>12.1f}" for v in cells))
    print("(phase columns: ms in the profiled step; data: ms per batch from the DataLoader with "
          f"{args.workers} workers, overlapped with compute in training)")
    targets = {"r2o": 1.25, "odin": 1.25, "odin_cached": 1.10}
    for name, target in targets.items():
        if name in results:
            ratio = results[name]["ratio_to_byol"]
            print(f"target {name} <= {target:.2f}x BYOL: measured {ratio:.2f}x -> {'PASS' if ratio <= target else 'MISS'}")
            if name.startswith("odin") and "byol_fpn" in results:
                r = results[name]["ms_per_step"] / results["byol_fpn"]["ms_per_step"]
                print(f"  {name} vs BYOL on the same ResNet+FPN: {r:.2f}x -> {'PASS' if r <= target else 'MISS'}")


if __name__ == "__main__":
    main()
