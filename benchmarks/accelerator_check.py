"""One prepared check of the paper-scale path on an accelerator (issue 12), and its CPU rehearsal.

    python benchmarks/accelerator_check.py            # CUDA: ResNet-50/224, every method, <= ~6 min
    python benchmarks/accelerator_check.py --tiny     # CPU: ResNet-18/64 px, same code paths, ~1-2 min

For every method (BYOL, DetCon, Odin, R2O, the hybrid) on the same batches:
* correctness: step-1 loss in fp32, bf16 and fp16 (+GradScaler; its backward and unscale too) from the
  same initial weights; all finite, and bf16/fp16 within tolerance of fp32;
* k-means: labels of the accelerator run equal the CPU run on the same features (Odin's per-image
  case and R2O's pooled case); on --tiny the device is the CPU, so the GPU schedule (convergence read
  every 8 iterations) is compared with the CPU one (every iteration);
* speed: ms/step in bf16 (CUDA events on GPU, perf_counter on CPU; warm-up steps dropped), with
  channels_last off and on, the ratio to BYOL, and throughput against the bare backbone's forward +
  backward (the ceiling of `benchmarks/throughput.py`);
* `transfer detect`: a few iterations of the fine-tuning loop (`transfer.loop.Fitter.fit` on the task's
  DataLoader, Mask R-CNN from `random:<arch>`, its final checkpoint written): ResNet-50 at 800 px (demo
  scenes upscaled by the detector's transform), batch 2, norm syncbn (a 1-process nccl group is made when
  none exists, as `torchrun --nproc_per_node 1` gives; at world size 1 torch's SyncBatchNorm normalises
  with the process's own statistics), fp32 (the transfer loop has no autocast); on --tiny ResNet-18 at
  64 px, norm bn, on the CPU. Reports the losses (all must be finite), seconds per iteration (data loading
  included, warm-up and the iteration that writes the checkpoint left out) and the peak GPU memory.
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
import torch.distributed as torch_dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.step_time import METHODS as STEP_METHODS, batch_kind, make_config, time_data  # noqa: E402
from benchmarks.throughput import time_ceiling  # noqa: E402
from benchmarks.transfer import build as build_transfer, make_train_set, transfer_config  # noqa: E402
from discorep.apps.demodata.scenes import make_scenes  # noqa: E402
from discorep.discovery.kmeans import batched_kmeans  # noqa: E402
from discorep.engine import builders  # noqa: E402
from discorep.engine.distributed import DistInfo  # noqa: E402
from discorep.errors import NonFiniteLossError  # noqa: E402
from discorep.methods import build_method  # noqa: E402
from discorep.methods.base import StepInfo  # noqa: E402
from discorep.transfer import detect  # noqa: E402
from discorep.transfer.loop import Fitter, endless_batches  # noqa: E402

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


def _transfer_settings(tiny: bool) -> dict:
    if tiny:
        return dict(arch="resnet18", size=64, image_size=64, batch=2, warmup=0, timed=1, norm="bn",
                    preset="cpu", workers=0, device="cpu")
    return dict(arch="resnet50", size=800, image_size=320, batch=2, warmup=2, timed=5, norm="syncbn",
                preset="coco_1x_d2", workers=4, device="cuda")


def _one_process_group(norm: str, device: torch.device) -> bool:
    """For syncbn without torchrun: a 1-process group (nccl on CUDA). True when this check made it."""
    if norm != "syncbn" or torch_dist.is_initialized():
        return False
    torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=torch_dist.HashStore(),
                                  rank=0, world_size=1)
    return True


def _stamped(batches, marks: list[float], device: torch.device):
    """The batches, with the time (synchronised) at which the loop asked for each."""
    for item in batches:
        _sync(device)
        marks.append(time.perf_counter())
        yield item


def transfer_check(tiny: bool, tmp: Path) -> dict:
    """A short `transfer detect` fine-tuning: its losses, s/iteration and peak GPU memory."""
    s = _transfer_settings(tiny)
    device = torch.device(s["device"])
    iters = s["warmup"] + s["timed"] + 1  # + 1: the last iteration also writes the checkpoint (not timed)
    cfg = transfer_config("detect", s["preset"], s["size"], s["batch"], iters, s["device"],
                          [f"model.norm={s['norm']}", f"solver.workers={s['workers']}"])
    train_set = make_train_set("detect", cfg, tmp / "detect", s["batch"] * iters, s["image_size"])
    made_group = _one_process_group(s["norm"], device)
    dist_info = DistInfo(0, 1, 0, device)
    out: dict = {"settings": s, "process_group": "made (1 process)" if made_group else
                 ("existing" if torch_dist.is_initialized() else "none")}
    try:
        if device.type == "cuda":
            held = torch.cuda.memory_allocated(device)  # what the method checks still hold
            torch.cuda.reset_peak_memory_stats(device)
        model, opt = build_transfer("detect", cfg, s["arch"], train_set.num_classes, device)
        losses, marks = [], []
        task_loss = detect.loss_fn(device)

        def recorded(net, batch):
            total, terms = task_loss(net, batch)
            losses.append(total.detach())
            return total, terms

        loader = detect.train_loader(train_set, cfg, dist_info, seed=0, start=0)
        fitter = Fitter(cfg, tmp / "detect-run", dist_info, {"backbone": f"random:{s['arch']}", "seed": 0})
        try:
            fitter.fit(model, opt, _stamped(endless_batches(loader), marks, device), recorded, 0, "transfer detect")
            out["error"] = None
        except NonFiniteLossError as err:
            out["error"] = str(err)
        out["losses"] = [float(x) for x in losses]
        gaps = [b - a for a, b in zip(marks[:-1], marks[1:])][s["warmup"]:]
        out["s_per_iter"] = statistics.median(gaps) if gaps else math.nan
        out["peak_gpu_mib"] = ((torch.cuda.max_memory_allocated(device) - held) / 2**20
                               if device.type == "cuda" else None)
        out["checkpoint_written"] = (tmp / "detect-run" / "checkpoints" / f"iter_{iters:08d}.pt").is_file()
    finally:
        if made_group:
            torch_dist.destroy_process_group()
    out["ok"] = (out["error"] is None and len(out["losses"]) == iters
                 and all(math.isfinite(x) for x in out["losses"]) and out["checkpoint_written"])
    return out


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
        del by_prior, batches  # the methods' batches: not counted in the transfer check's peak memory
        results["transfer"] = transfer_check(tiny, tmp)
    base = results["methods"]["byol"]["ms_bf16"]
    for r in results["methods"].values():
        r["ratio_to_byol"] = r["ms_bf16"] / base
        r["images_per_s"] = s["batch"] / (r["ms_bf16"] / 1000.0)
        r["vs_ceiling"] = ceiling / r["ms_bf16"]
    results["ceiling_ms"] = ceiling
    results["kmeans_labels_equal"] = kmeans_agreement(device, tiny)
    results["ok"] = (all(r["ok"] for r in results["methods"].values()) and all(results["kmeans_labels_equal"].values())
                     and results["transfer"]["ok"])
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
    report_transfer(results["transfer"])
    print("RESULT", "ok" if results["ok"] else "FAILED")


def report_transfer(t: dict) -> None:
    s = t["settings"]
    losses = t["losses"]
    finite = sum(math.isfinite(x) for x in losses)
    memory = f"{t['peak_gpu_mib']:.0f} MiB" if t["peak_gpu_mib"] is not None else "n/a (cpu)"
    print(f"transfer detect: Mask R-CNN {s['arch']} at {s['size']} px, batch {s['batch']}, norm {s['norm']} "
          f"(process group: {t['process_group']}), fp32: losses " + " ".join(f"{x:.3f}" for x in losses)
          + f" ({finite}/{len(losses)} finite); {t['s_per_iter']:.3f} s/iter (median of {s['timed']} after "
          f"{s['warmup']} warm-up, data loading included); peak GPU memory {memory}; checkpoint "
          + ("written" if t["checkpoint_written"] else "MISSING") + ("" if t["error"] is None else f"; {t['error']}"))


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
