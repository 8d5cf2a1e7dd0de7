"""One prepared check of the paper-scale path on an accelerator (issue 12), and its CPU rehearsal.

    python benchmarks/accelerator_check.py            # CUDA: ResNet-50/224, every method, <= ~6 min
    python benchmarks/accelerator_check.py --tiny     # CPU: ResNet-18/64 px, same code paths, < 60 s

For every method (BYOL, DetCon, Odin, R2O, the hybrid) on the same batches:
* correctness: step-1 loss in fp32, bf16 and fp16 (+GradScaler; its backward and unscale too) from the
  same initial weights; all finite, and bf16/fp16 within tolerance of fp32;
* k-means: labels of the accelerator run equal the CPU run on the same features (Odin's per-image
  case and R2O's pooled case); on --tiny the device is the CPU, so the GPU schedule (convergence read
  every 8 iterations) is compared with the CPU one (every iteration);
* speed: ms/step in bf16 (CUDA events on GPU, perf_counter on CPU; warm-up steps dropped), with
  channels_last off and on, the ratio to BYOL, and throughput against the bare backbone's forward +
  backward (the ceiling of `benchmarks/throughput.py`).
Prints one table and exits 1 if a check fails. Nothing here runs in a training run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.step_time import METHODS as STEP_METHODS, batch_kind, make_config, time_data  # noqa: E402
from benchmarks.throughput import time_ceiling  # noqa: E402
from discorep.apps.demodata.scenes import make_scenes  # noqa: E402
from discorep.discovery.kmeans import batched_kmeans  # noqa: E402
from discorep.engine import builders  # noqa: E402
from discorep.engine.distributed import DistInfo  # noqa: E402
from discorep.methods import build_method  # noqa: E402
from discorep.methods.base import StepInfo  # noqa: E402

METHODS = ("byol", "detcon", "odin", "r2o", "hybrid")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# |loss_p − loss_fp32| ≤ REL·|loss_fp32| + ABS on step 1: half-precision features also move k-means
# boundaries, so masks (and the loss) may differ a little more than the arithmetic alone would.
TOLERANCE = {"bf16": (0.05, 0.05), "fp16": (0.02, 0.02)}


def _settings(tiny: bool) -> dict:
    if tiny:
        return dict(arch="resnet18", size=64, batch=4, steps=2, warmup=1, image_size=96, device="cpu")
    return dict(arch="resnet50", size=224, batch=32, steps=5, warmup=2, image_size=320, device="cuda")


def _args(s: dict, precision: str, channels_last: bool) -> argparse.Namespace:
    return argparse.Namespace(arch=s["arch"], size=s["size"], batch=s["batch"], workers=0, device=s["device"],
                              precision=precision, compile="none", channels_last=channels_last)


def _config(name: str, s: dict, data: Path, cache: Path, precision: str = "fp32", channels_last: bool = False):
    cfg = make_config(name, _args(s, precision if precision != "fp16" else "fp32", channels_last), data, cache)
    cfg.model.channels_last = channels_last
    if s["arch"] == "resnet18" and cfg.data.prior != "none":
        # --tiny: a 64-px view has a 2×2 C5 grid, where few SLIC masks are present in both views (loss 0).
        # Pool C4 (4×4) over 16 regions per image, K0 = 8: the same code paths with non-trivial masks.
        cfg.method.features = "c4"
        cfg.data.prior_params = {"n_segments": 16}
        cfg.method.K0 = 8
    return cfg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_losses(cfg, batch: dict, device: torch.device) -> dict[str, float]:
    """Step-1 loss per precision from identical initial weights; fp16 also runs backward + GradScaler."""
    torch.manual_seed(0)
    initial = build_method(cfg).to(device)
    out = {}
    for name, dtype in DTYPES.items():
        method = copy.deepcopy(initial).train()
        info = StepInfo(step=0, epoch=0.0, total_epochs=cfg.train.epochs, seed=0)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = method(batch, info)
        if name == "fp16":  # the engine's fp16 path: scaled backward, unscale, step, update
            scaler = torch.amp.GradScaler(device.type)
            opt = builders.build_optimizer_for(cfg, method.trained_modules())
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            scale_before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            # An overflow at the initial scale is GradScaler's normal start (it skips and halves);
            # what must hold is a finite scale afterwards.
            out["fp16_scaler_ok"] = math.isfinite(scaler.get_scale()) and scaler.get_scale() > 0
            out["fp16_first_step_skipped"] = scaler.get_scale() < scale_before
        out[name] = loss.detach().item()
    return out


def time_method(cfg, batches: list[dict], device: torch.device, warmup: int) -> float:
    """Median ms of forward + backward + optimizer + EMA under bf16 autocast."""
    torch.manual_seed(0)
    method = build_method(cfg).to(device).train()
    if cfg.model.channels_last:
        method = method.to(memory_format=torch.channels_last)
    opt = builders.build_optimizer_for(cfg, method.trained_modules())
    times = []
    for i, batch in enumerate(batches):
        info = StepInfo(step=i, epoch=0.0, total_epochs=cfg.train.epochs, seed=0)
        _sync(device)
        tic = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = method(batch, info)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(info, 0.99, 1000)
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - tic) * 1000.0)
    return statistics.median(times)


def kmeans_agreement(device: torch.device, tiny: bool) -> dict[str, bool]:
    """Labels on `device` (its default schedule) equal the CPU's on the same features."""
    g = torch.Generator().manual_seed(0)
    cases = {"odin": (torch.randn(8 if tiny else 64, 196, 256, generator=g), 16),
             "r2o": (torch.randn(1, 400 if tiny else 6400, 256 if tiny else 1024, generator=g), 32 if tiny else 128)}
    out = {}
    for name, (x, k) in cases.items():
        cpu = batched_kmeans(x, k, seed=1, sync_every=1)
        dev = batched_kmeans(x.to(device), k, seed=1, sync_every=8)
        out[name] = bool(torch.equal(cpu.labels, dev.labels.cpu()))
    return out


def _close(value: float, reference: float, precision: str) -> bool:
    rel, abs_ = TOLERANCE[precision]
    return math.isfinite(value) and abs(value - reference) <= rel * abs(reference) + abs_


def run(tiny: bool) -> dict:
    s = _settings(tiny)
    if s["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny for the CPU rehearsal")
    device = torch.device(s["device"])
    dist = DistInfo(0, 1, 0, device)
    n = s["steps"] + s["warmup"]
    results: dict = {"settings": s, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                     else "cpu", "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_scenes(tmp / "scenes", s["batch"] * (n + 1), seed=0, image_size=(s["image_size"],) * 2)
        data, cache = tmp / "scenes" / "images", tmp / "cache"
        by_prior: dict[tuple, list] = {}
        for name in METHODS:
            cfg = _config(name, s, data, cache)
            key = batch_kind(cfg)  # the prior and the extra views the method reads
            if key not in by_prior:
                batches, _ = time_data(cfg, dist, n)
                by_prior[key] = [builders.to_device(b, device) for b in batches[:n]]
            batches = by_prior[key]
            r = step_losses(cfg, batches[0], device)
            r["ms_bf16"] = time_method(_config(name, s, data, cache, "bf16"), batches, device, s["warmup"])
            r["ms_bf16_channels_last"] = time_method(_config(name, s, data, cache, "bf16", True), batches, device,
                                                     s["warmup"])
            r["ok"] = (all(math.isfinite(r[p]) for p in DTYPES) and r["fp16_scaler_ok"]
                       and all(_close(r[p], r["fp32"], p) for p in TOLERANCE))
            results["methods"][name] = r
        ceiling_cfg = _config("byol", s, data, cache, "bf16")
        ceiling = time_ceiling(ceiling_cfg, by_prior[batch_kind(ceiling_cfg)], device, s["warmup"])["ms_per_step"]
    base = results["methods"]["byol"]["ms_bf16"]
    for r in results["methods"].values():
        r["ratio_to_byol"] = r["ms_bf16"] / base
        r["images_per_s"] = s["batch"] / (r["ms_bf16"] / 1000.0)
        r["vs_ceiling"] = ceiling / r["ms_bf16"]
    results["ceiling_ms"] = ceiling
    results["kmeans_labels_equal"] = kmeans_agreement(device, tiny)
    results["ok"] = all(r["ok"] for r in results["methods"].values()) and all(results["kmeans_labels_equal"].values())
    return results


def report(results: dict) -> None:
    s = results["settings"]
    print(f"accelerator check on {results['device']}: {s['arch']} at {s['size']} px, batch {s['batch']}, "
          f"{s['steps']} timed steps after {s['warmup']} warm-up")
    print(f"{'method':8} {'fp32 loss':>10} {'bf16':>9} {'fp16':>9} {'ok':>3} {'ms bf16':>9} {'ms cl':>9} "
          f"{'x BYOL':>7} {'img/s':>8} {'vs ceil':>8}")
    for name, r in results["methods"].items():
        print(f"{name:8} {r['fp32']:10.4f} {r['bf16'] - r['fp32']:+9.4f} {r['fp16'] - r['fp32']:+9.4f} "
              f"{'yes' if r['ok'] else 'NO':>3} {r['ms_bf16']:9.1f} {r['ms_bf16_channels_last']:9.1f} "
              f"{r['ratio_to_byol']:7.2f} {r['images_per_s']:8.1f} {r['vs_ceiling']:8.1%}")
    print(f"backbone ceiling (forward+backward, bf16): {results['ceiling_ms']:.1f} ms/step; "
          f"k-means labels equal to CPU: {results['kmeans_labels_equal']}")
    print("RESULT", "ok" if results["ok"] else "FAILED")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU rehearsal at ResNet-18/64 px (CI runs this)")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    results = run(args.tiny)
    report(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
