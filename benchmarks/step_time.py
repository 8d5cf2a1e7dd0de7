"""Time per training step of DetCon, Odin (continuous / cached segments), R2O and the R2O hybrid
against BYOL, on the same backbone, batch, resolution and batches, measured in one run.

    python benchmarks/step_time.py --arch resnet18 --batch 16 --size 96 --steps 10
    python benchmarks/step_time.py --arch resnet50 --batch 32 --size 224 --device cuda --precision bf16

Prints ms/step (median over steps), the ratio to BYOL, and a breakdown: data loading (real DataLoader,
per batch), the whole forward and backward+optimizer+EMA (timed every step, medians), and inside the
forward the discovery forward, k-means, alignment, pooling+heads and loss (torch.profiler
record_function scopes "discorep/<phase>" in one extra profiled step: CPU time on cpu, CUDA kernel time
on cuda). `--hotspots N` also lists the N ops with the most self CPU time in that step, each with the
first discorep/ source line on its Python stack. Targets from the issue: R2O and Odin ≤ 1.25× BYOL, Odin
with cached segments ≤ 1.10×. Nothing is asserted: the numbers are what this machine measured.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from discorep.apps.demodata.scenes import make_scenes
from discorep.engine import builders
from discorep.engine.config import Config
from discorep.engine.configio import deep_merge, from_dict
from discorep.engine.distributed import DistInfo
from discorep.methods import build_method
from discorep.methods.base import StepInfo

SLIC_100 = {"prior": "slic", "prior_params": {"n_segments": 100}}  # DetCon's and R2O's prior
PHASES = ("discovery_forward", "kmeans", "align", "pool_heads", "loss")
METHODS = {
    "byol": {"method": {"name": "byol", "loss": "byol", "features": "c5"}},
    # BYOL on the same ResNet+FPN as Odin (global pool of the stride-4 FPN map): isolates what Odin's
    # discovery costs from what its FPN features cost.
    "byol_fpn": {"method": {"name": "byol", "loss": "byol", "features": "fpn"}, "model": {"fpn": True}},
    "detcon": {"method": {"name": "detcon", "loss": "contrastive", "features": "c5"},
               "data": SLIC_100},
    "odin": {"method": {"name": "odin", "loss": "contrastive", "features": "fpn", "K": 16}, "model": {"fpn": True}},
    # Odin's discovery-cost options (issue 16; docs/performance.md): cluster h instead of z, the per-vector
    # projector in bf16, the spanning view at 1x the view size instead of Odin's 2x (SPANNING_FACTOR).
    "odin_h": {"method": {"name": "odin", "loss": "contrastive", "features": "fpn", "K": 16,
                          "discovery_use_projection": False}, "model": {"fpn": True}},
    "odin_bf16": {"method": {"name": "odin", "loss": "contrastive", "features": "fpn", "K": 16,
                             "discovery_projector_dtype": "bf16"}, "model": {"fpn": True}},
    "odin_span1x": {"method": {"name": "odin", "loss": "contrastive", "features": "fpn", "K": 16},
                    "model": {"fpn": True}},
    "odin_cached": {"method": {"name": "odin", "loss": "contrastive", "features": "fpn", "K": 16,
                               "discovery_update": "discrete", "discrete_every_epochs": 100},
                    "model": {"fpn": True}},
    "r2o": {"method": {"name": "r2o", "loss": "byol", "features": "c5", "K0": 128, "t_alpha": 40},
            "data": SLIC_100},
    "hybrid": {"method": {"name": "r2o", "loss": "byol", "features": "c5", "K0": 128, "t_alpha": 40,
                          "region_network": "discovery"}, "data": SLIC_100},
}
ODIN_OPTIONS = ("odin_h", "odin_bf16", "odin_span1x")  # asked for by name, not in the default list
SPANNING_FACTOR = {"odin_span1x": 1}  # spanning view side / view side; 2 (Odin A.1) for every other method


def make_config(name: str, args, data_root: Path, cache: Path) -> Config:
    base = {"data": {"root": str(data_root), "num_workers": args.workers, "prior_cache": str(cache),
                     "prior_size": args.size},
            "views": {"size": args.size, "spanning_size": SPANNING_FACTOR.get(name, 2) * args.size, "raw_size": args.size},
            "model": {"arch": args.arch, "channels_last": args.device == "cuda", "compile": args.compile},
            "train": {"batch_size": args.batch, "device": args.device, "precision": args.precision,
                      "progress": False, "epochs": 300}}
    return from_dict(Config, deep_merge(base, METHODS[name]))


def batch_kind(cfg: Config) -> tuple[bool, int, tuple[str, ...]]:
    """Methods whose batches are identical share them (same sampler seed: same images and views); batches
    differ by the region prior, by the spanning view's size (odin_span1x) and by the extra views the
    method reads (`needs_views`: BYOL's batch has no spanning view for Odin to read)."""
    views = tuple(sorted(builders.view_sampler(cfg).extra))
    return cfg.data.prior != "none", cfg.views.spanning_size, views


def time_data(cfg: Config, dist: DistInfo, batches: int):
    """`batches` batches from the training DataLoader and the mean time per batch after the first.

    The mean over the whole run, not the median of the gaps: with W workers batches arrive in bursts of
    W (gaps near 0 then near the per-batch cost), so a median would swing between the two.
    """
    dataset = builders.build_dataset(cfg, dist)  # builds the region-prior cache once, as training does
    loader, _ = builders.build_loader(cfg, dataset, dist, start_step=0, total_steps=batches)
    it = iter(loader)
    kept = [next(it)]  # worker start-up is not per-batch cost
    tic = time.perf_counter()
    kept.extend(it)
    per_batch = (time.perf_counter() - tic) / (len(kept) - 1) if len(kept) > 1 else float("nan")
    return kept, per_batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Clock:
    """Marks within one step: CUDA events on the GPU (no extra synchronisation), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        """Milliseconds between consecutive marks (call after synchronising)."""
        a, b = self.marks[:-1], self.marks[1:]
        if self.cuda:
            return [x.elapsed_time(y) for x, y in zip(a, b)]
        return [(y - x) * 1000.0 for x, y in zip(a, b)]


def _phases(prof, device: torch.device) -> dict[str, float]:
    """Total ms per discorep/<phase> scope. Only the CPU-side record_function events are read (on CUDA
    their device time sums the kernels launched inside them; the GPU-side annotation copies that the
    profiler also lists under the same name are skipped, so nothing is counted twice)."""
    out: dict[str, float] = {}
    for evt in prof.key_averages():
        if evt.key.startswith("discorep/") and evt.device_type == DeviceType.CPU:
            t = evt.device_time_total if device.type == "cuda" else evt.cpu_time_total
            name = evt.key.split("/", 1)[1]
            out[name] = out.get(name, 0.0) + t / 1000.0
    return out


def _where(evt) -> str:
    """The innermost discorep/ Python function around a profiler event, as "file:line (function)" with
    the line of the function's `def`; for autograd-engine ops the backward node instead."""
    node = evt.cpu_parent
    while node is not None:
        name = node.name
        if getattr(node, "is_python_function", False):
            m = _PY_FRAME.match(name.replace("\\", "/"))
            if m and "/discorep/" in "/" + m["file"] and "/benchmarks/" not in "/" + m["file"]:
                file = "discorep/" + ("/" + m["file"]).split("/discorep/", 1)[1]
                return f"{file}:{m['line']} ({m['fn']})"
        elif name.startswith("autograd::engine::evaluate_function: "):
            return "backward of " + name.split(": ", 1)[1]
        node = node.cpu_parent
    return "?"


_PY_FRAME = re.compile(r"(?P<file>.+?\.py)\((?P<line>\d+)\): (?P<fn>.+)")


def _hotspots(prof, n: int) -> list[dict]:
    """The n (op, place) pairs with the most self CPU time in the profiled step (needs with_stack)."""
    agg: dict[tuple[str, str], list[float]] = {}
    for evt in prof.events():
        if (evt.device_type != DeviceType.CPU or getattr(evt, "is_python_function", False)
                or evt.self_cpu_time_total <= 0 or evt.name.startswith("discorep/")):
            continue
        slot = agg.setdefault((evt.name, _where(evt)), [0.0, 0])
        slot[0] += evt.self_cpu_time_total / 1000.0
        slot[1] += 1
    top = sorted(agg.items(), key=lambda kv: -kv[1][0])[:n]
    return [{"op": op, "where": where, "self_cpu_ms": ms, "calls": calls} for (op, where), (ms, calls) in top]


def build_timed_method(cfg: Config, device: torch.device):
    """The method as every timing here builds it: on `device`, channels-last when the config says so,
    in training mode."""
    method = build_method(cfg).to(device)
    if cfg.model.channels_last:
        method = method.to(memory_format=torch.channels_last)
    return method.train()


def time_steps(cfg: Config, batches: list[dict], device: torch.device, warmup: int, hotspots: int = 0) -> dict:
    """Forward + backward + optimizer + EMA on each batch; the last batch is a separate profiled step."""
    torch.manual_seed(0)
    method = build_timed_method(cfg, device)
    builders.compile_encoders(method, cfg.model.compile, device)  # compiles during the warmup steps
    opt = builders.build_optimizer_for(cfg, method.trained_modules())
    dtype = {"bf16": torch.bfloat16, "fp32": None}[cfg.train.precision]
    if getattr(method, "cache", None) is not None:
        # Steady state between two discrete copies: every image already has cached segments. (The
        # first epoch after a copy fills the cache at the cost of the continuous mode.)
        for batch in batches:
            method.segments(builders.to_device(batch, device), StepInfo(0, 0.0, cfg.train.epochs, 0))
    steps, fwd, bwd = [], [], []
    result: dict = {}
    for i, batch in enumerate(batches):
        b = builders.to_device(batch, device)
        info = StepInfo(step=i, epoch=0.0, total_epochs=cfg.train.epochs, seed=0)
        profile = i == len(batches) - 1
        prof = None
        if profile:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if device.type == "cuda":
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            prof = torch.profiler.profile(activities=acts, with_stack=hotspots > 0)
            prof.__enter__()
        clock = _Clock(device)
        _sync(device)
        tic = time.perf_counter()
        clock.mark()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = method(b, info)
        clock.mark()
        opt.zero_grad(set_to_none=True)
        with torch.profiler.record_function("discorep/backward_optimizer"):
            loss.backward()
            opt.step()
            method.after_step(info, 0.99, 1000)
        clock.mark()
        _sync(device)
        elapsed_ms = (time.perf_counter() - tic) * 1000.0
        if prof is not None:
            prof.__exit__(None, None, None)
            result["phases_ms"] = _phases(prof, device)
            result["profiled_step_ms"] = elapsed_ms
            if hotspots:
                result["hotspots"] = _hotspots(prof, hotspots)
        elif i >= warmup:
            f, bw = clock.intervals_ms()
            steps.append(elapsed_ms)
            fwd.append(f)
            bwd.append(bw)
    if not steps:
        raise ValueError("no timed steps: need --steps >= 1")
    result.update(ms_per_step=statistics.median(steps), forward_ms=statistics.median(fwd),
                  backward_optimizer_ms=statistics.median(bwd), steps_ms=steps)
    return result


def add_common_args(p: argparse.ArgumentParser, *, steps: int, warmup: int, workers: int,
                    workers_help: str) -> None:
    """The model, data and device options every step benchmark shares (throughput.py too)."""
    p.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet50"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=96, help="view size (spanning view: 2x, raw view and prior: 1x)")
    p.add_argument("--steps", type=int, default=steps, help="timed steps per method (after --warmup)")
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--workers", type=int, default=workers, help=workers_help)
    p.add_argument("--image-size", type=int, default=192, help="side of the generated demo scenes")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--compile", default="none", choices=("none", "default", "reduce-overhead", "max-autotune"),
                   help="model.compile: torch.compile the encoders (use --warmup >= 2: the first steps compile)")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")


def resolve_run(args: argparse.Namespace, method_items: list[str]) -> tuple[list[str], torch.device, DistInfo]:
    """Thread count set; method names checked, BYOL first; the device checked."""
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for item in method_items for n in item.split(",") if n]
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(METHODS)}")
    names = ["byol", *dict.fromkeys(n for n in names if n != "byol")]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    return names, device, DistInfo(0, 1, 0, device)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, steps=10, warmup=2, workers=2, workers_help="DataLoader workers for the data-time measurement")
    p.add_argument("--methods", nargs="+", default=[",".join(m for m in METHODS if m not in ODIN_OPTIONS)],
                   help=f"comma- or space-separated, from {', '.join(METHODS)} (byol is always added)")
    p.add_argument("--hotspots", type=int, default=0, metavar="N",
                   help="also print the N ops with the most self CPU time per method, with file:line")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "benchmarks/step_time.py", *(sys.argv[1:] if argv is None else argv)])
    names, device, dist = resolve_run(args, args.methods)
    n_batches = args.steps + args.warmup + 1  # + the profiled step
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_scenes(tmp / "scenes", args.batch * (n_batches + 1), seed=0,
                    image_size=(args.image_size, args.image_size))
        batches_by_kind: dict[tuple, tuple] = {}
        for name in names:
            cfg = make_config(name, args, tmp / "scenes" / "images", tmp / "cache")
            kind = batch_kind(cfg)
            if kind not in batches_by_kind:
                batches_by_kind[kind] = time_data(cfg, dist, n_batches)
            batches, data_s = batches_by_kind[kind]
            r = time_steps(cfg, batches[:n_batches], device, args.warmup, args.hotspots)
            results[name] = {"data_ms_per_batch": data_s * 1000, **r}
    base = results["byol"]["ms_per_step"]
    for name, r in results.items():
        r["ratio_to_byol"] = 1.0 if name == "byol" else r["ms_per_step"] / base
    env = {"device": _device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "command": command}
    report(results, args, env)
    if args.out:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"settings": settings, "environment": env, "results": results,
                                        "targets": _targets(results)}, indent=2))
    return results


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


TARGETS = {"r2o": 1.25, "odin": 1.25, "odin_cached": 1.10}


def _targets(results: dict) -> dict:
    out = {}
    for name, target in TARGETS.items():
        if name in results:
            ratio = results[name]["ratio_to_byol"]
            out[name] = {"target": target, "ratio": ratio, "pass": bool(ratio <= target)}
            if name.startswith("odin") and "byol_fpn" in results:
                r = results[name]["ms_per_step"] / results["byol_fpn"]["ms_per_step"]
                out[name]["ratio_to_byol_fpn"] = r
    return out


def report(results: dict, args, env: dict) -> None:
    print(f"device={env['device']} torch={env['torch']} threads={env['threads']} arch={args.arch} "
          f"batch={args.batch} size={args.size} precision={args.precision} compile={args.compile}")
    print("command: " + env["command"])
    cols = ("data", "forward", *PHASES, "bwd+opt+ema")
    print(f"{'method':<12}{'ms/step':>9}{'x BYOL':>8}  " + "".join(f"{c[:11]:>12}" for c in cols))
    for name, r in results.items():
        ph = r["phases_ms"]
        cells = [r["data_ms_per_batch"], r["forward_ms"], *(ph.get(c, 0.0) for c in PHASES),
                 r["backward_optimizer_ms"]]
        print(f"{name:<12}{r['ms_per_step']:>9.1f}{r['ratio_to_byol']:>8.2f}  "
              + "".join(f"{v:>12.1f}" if math.isfinite(v) else f"{'-':>12}" for v in cells))
    unit = "CUDA kernel ms" if args.device == "cuda" else "CPU ms"
    print(f"(ms/step, forward, bwd+opt+ema: medians over {args.steps} timed steps; phases: {unit} inside the "
          f"forward, from one extra profiled step; data: ms per batch from the DataLoader with {args.workers} "
          "workers, overlapped with compute in training)")
    noisy = {n: max(r["steps_ms"]) / min(r["steps_ms"]) for n, r in results.items()}
    noisy = {n: v for n, v in noisy.items() if v > 1.5}
    if noisy:
        print("WARNING: timed steps vary (slowest/fastest " + ", ".join(f"{n} {v:.1f}x" for n, v in noisy.items())
              + "): another process competed for the cores? Ratios from this run are unreliable; "
              "rerun on a quiet machine or with --threads 1.")
    for name, t in _targets(results).items():
        print(f"target {name} <= {t['target']:.2f}x BYOL: measured {t['ratio']:.2f}x -> "
              f"{'PASS' if t['pass'] else 'MISS'}")
        if "ratio_to_byol_fpn" in t:
            r = t["ratio_to_byol_fpn"]
            print(f"  {name} vs BYOL on the same ResNet+FPN: {r:.2f}x -> {'PASS' if r <= t['target'] else 'MISS'}")
    for name, r in results.items():
        if r.get("hotspots"):
            print(f"hot spots, {name} (self CPU ms in the profiled step):")
            for h in r["hotspots"]:
                print(f"  {h['self_cpu_ms']:>9.1f}  {h['calls']:>5}x  {h['op']:<36} {h['where']}")


if __name__ == "__main__":
    main()
