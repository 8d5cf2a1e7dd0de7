"""Memory: k-means and mask-alignment peaks against their formulas, and peak RSS of real training.

    python benchmarks/memory.py kmeans        # measured peak allocation vs formula (seconds)
    python benchmarks/memory.py train         # peak RSS of `make demo`'s pretraining (--epochs, 1)
    python benchmarks/memory.py step --arch resnet50 --batch 32 --size 224 --methods byol,r2o
    python benchmarks/memory.py segments      # Odin's discrete-mode segment store: ImageNet formula + a measure

kmeans: the peak of the bytes torch allocates inside `discovery.kmeans.batched_kmeans` and
`discovery.align.align_masks_views` (CPU, float32), read from `torch.profiler`'s allocation events
(profile_memory=True: every allocation and free with its size, in order; the peak of the running sum
is the call's peak above what existed before it), next to the formulas below, which were written by
reading the code (docs/performance.md, "Memory"), not fitted:

    k-means, R = B * n_init:  max(12 R N D + 4 R K D + 9 R N,                  final assignment
                                  4 R N D + 8 R N K + 12 R K D + 17 R N)       Lloyd distances
    masks, V views of a (B, P, P) label map with M ids, (g, g) grid, s = ceil(P/g) + 1 samples per cell
    and axis, S = B (g s)^2 samples per view:
                              4 B M g^2 (V - 1) + max(4 B (M + 1) g^2 + 48 B g s + 8 g^2
                                                      + max(16 S, 4 B M g^2),  12 B M g^2)

train: `discorep pretrain --config configs/r2o_cpu_demo.yaml` (the demo's config and data size: 256
generated 192-px scenes) for `--epochs` epochs (1: 8 steps); the peak RSS of the main process (wait4's ru_maxrss)
and the peak, sampled every 0.2 s, of the RSS and PSS summed over it and its DataLoader workers
(PSS counts pages shared after fork once; RSS counts them in every process).

step: one fresh process per method builds the config's method at the given arch / batch / view size
(fp32, CPU), loads one batch, then runs forward + backward + optimizer + EMA; it reports the RSS
before the first step and the peak RSS (VmHWM) during the steps.

segments: Odin's per-rank segment store (discovery/cache.py) at ImageNet scale (1,281,167 images,
views.raw_size 448, FPN stride 4: 112x112 int16 maps) for 8 and 64 processes, from `segment_store_bytes`,
beside the in-memory cache it replaced; then `--images` maps through the real store (one rank of 8):
the file's size and the peak-RSS growth (VmHWM, reset first) against the same formula.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 1024 * 1024


# --------------------------------------------------------------------------------------- formulas
def kmeans_peak_bytes(B: int, N: int, D: int, K: int, n_init: int = 1) -> int:
    """Predicted peak bytes allocated by `batched_kmeans` on CPU (float32 input; the input excluded).

    Final assignment: the normalised points (4RND) + the one (c_label - x) temporary for the exact
    inertia, subtracted in place (4RND) + the final centroids (4RKD) + per-point vectors (33RN:
    labels, kept labels, squared norms, validity, norms). Lloyd: points + the (R, N, K) score matrix
    (4RNK) + centroids and sums/new centroids (8RKD) + per-point vectors (33RN). (The k-means++ centres
    are kept as indices since 2026-12-03, one 4RKD less than before.)
    k-means++ (on at most 16·K points per problem, (R, L, 16K) candidate distances) and the copies that
    drop converged images from the Lloyd working set (at most 3/4 of 4RND) stay below both terms.
    Gram path (N ≤ D): the Gram matrix (4RN²) stays allocated; the final centroids (4RKD) and the
    weights (4RNK) replace the two centroid sets; its Lloyd holds ~7 (R, N, K) weight/dot arrays.
    """
    R = B * n_init
    if N <= D:  # the Gram path (`kmeans_gram`, CPU default when N <= D): G and (R, N, K) weights instead
        assign = 8 * R * N * D + 4 * R * N * N + 4 * R * K * D + 4 * R * N * K + 33 * R * N
        lloyd = 4 * R * N * D + 4 * R * N * N + 28 * R * N * K + 33 * R * N
        return max(assign, lloyd)
    assign = 8 * R * N * D + 4 * R * K * D + 33 * R * N
    lloyd = 4 * R * N * D + 4 * R * N * K + 8 * R * K * D + 33 * R * N
    return max(assign, lloyd)


def align_peak_bytes(B: int, M: int, P: int, g: int, views: int = 2) -> int:
    """Predicted peak bytes of `align_masks_views` for (B, P, P) int64 labels with M ids into V views.

    Views are aligned one after the other; each finished one keeps its soft masks (4BMg^2). Inside a
    view: the scatter target with its extra "no label" channel (4B(M+1)g^2), the per-axis sample
    indices and weights (2 axes x 24·B·g·s), the cell offsets (8g^2), and then the larger of one corner's
    pixel indices + gathered ids (2 x 8S int64) and the divided result (4BMg^2); after it, the result,
    its flipped copy and the where-output (3 x 4BMg^2).
    """
    s = -(-P // g) + 1
    samples = B * (g * s) ** 2
    per_view = 4 * B * M * g * g
    inside = 4 * B * (M + 1) * g * g + 48 * B * g * s + 8 * g * g + max(16 * samples, per_view)
    return per_view * (views - 1) + max(inside, 3 * per_view)


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """Peak of the bytes torch allocated and did not yet free while `fn()` ran (CPU allocator).

    Uses the profiler's allocation records (`profile_memory=True`): each carries the signed size of
    one allocation or free; they are summed in time order and the maximum is returned.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return peak


def segment_store_bytes(n: int, world: int, side: int, batch: int = 64) -> dict:
    """Odin's discrete-mode cache of one process (docs/training.md): disk = a file of int16 side² maps per
    shard image (n // world), two versions at most; memory = the sorted shard + filled flags (9 bytes per
    image), the shard's draw (randperm of all n: 8n, transient) and one batch of maps (the int16 host
    copy a store makes, or the int16 buffer a read fills). `in_memory_before`: the dict of every image
    seen that it replaced (≈ all n per process)."""
    shard, one_map = n // world, side * side * 2
    return {"disk_per_file": shard * one_map, "disk_per_rank": 2 * shard * one_map,
            "memory": 9 * shard + 8 * n + batch * one_map, "in_memory_before": n * one_map}


def run_segments(args) -> dict:
    import numpy as np

    from discorep.data.pretrain import rank_shard
    from discorep.discovery.cache import SegmentStore

    side, rows = 448 // 4, []
    print(f"ImageNet (1,281,167 images), {side}x{side} maps: per process")
    for world in (8, 64):
        f = segment_store_bytes(1_281_167, world, side)
        rows.append({"world": world, **f})
        print(f"  {world:>3} processes: disk {f['disk_per_file'] / 1e9:.2f} GB per version file (at most 2), "
              f"memory {f['memory'] / MB:.1f} MB; the in-memory cache it replaced: {f['in_memory_before'] / 1e9:.1f} GB")
    n, world, batch = args.images * 8, 8, args.batch
    maps = torch.randint(0, 16, (batch, side, side))  # what segments() would hand over, made beforehand
    with tempfile.TemporaryDirectory() as tmp:
        warm = SegmentStore(Path(tmp) / "warm.bin", None)  # first calls' one-off allocations, not the store's
        warm.store(list(range(batch)), maps)
        warm.read(list(range(batch)))
        warm.close()
        before = _vm("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        store = SegmentStore(Path(tmp) / "rank0-of-8-v0.bin", rank_shard(n, 0, 0, world, 0))
        ids = store.shard.tolist()
        for lo in range(0, len(ids), batch):
            store.store(ids[lo:lo + batch], maps[:len(ids[lo:lo + batch])])
        for lo in range(0, len(ids), batch):
            store.read(ids[lo:lo + batch])
        store.flush()
        size, grown = store.path.stat().st_size, (_vm("VmHWM") - before) * MB
        store.close()
    f = segment_store_bytes(n, world, side, batch)
    measured = {"images": len(ids), "file_bytes": size, "file_formula": f["disk_per_file"], "rss_growth": grown,
                "memory_formula": f["memory"], "in_memory_before": len(ids) * side * side * 2}
    print(f"measured, {len(ids)} images of one rank of {world}: file {size / MB:.1f} MB (formula "
          f"{f['disk_per_file'] / MB:.1f} MB, ratio {size / f['disk_per_file']:.3f}); peak RSS growth "
          f"{grown / MB:.1f} MB (formula {f['memory'] / MB:.1f} MB, ratio {grown / f['memory']:.2f}; "
          f"an in-memory cache: {measured['in_memory_before'] / MB:.1f} MB)")
    return {"imagenet": rows, "measured": measured}


# ----------------------------------------------------------------------------------- kmeans mode
KMEANS_CASES = [  # (B, N, D, K, n_init)
    (64, 196, 256, 16, 1),     # Odin at 224 views, C5-sized grid (14x14)
    (16, 3136, 256, 16, 1),    # Odin, FPN grid of a 224-px spanning view (56x56)
    (32, 3136, 256, 16, 1),    # ... twice the batch
    (16, 6272, 256, 16, 1),    # ... twice the points
    (16, 3136, 512, 16, 1),    # ... twice the dimension
    (1, 3200, 1024, 128, 1),   # R2O pooled: 32 images x 100 regions, C4 of ResNet-50
    (1, 6400, 1024, 128, 1),   # ... 64 images
    (4, 1000, 64, 256, 1),     # K > D: the Lloyd term dominates
    (8, 240, 2048, 128, 1),    # Gram path: refine's ~240 regions of ResNet-50 C5
    (4, 100, 128, 100, 1),     # Gram path with K ~ N
    (16, 3136, 256, 16, 2),    # n_init 2
]
ALIGN_CASES = [  # (B, M, P, g, views)
    (16, 100, 96, 6, 2),      # R2O CPU demo: SLIC ids at prior_size 96, C4 grid of 96-px views
    (32, 100, 96, 6, 2),      # ... twice the batch
    (16, 100, 192, 6, 2),     # ... twice the prior side
    (8, 100, 224, 7, 2),      # R2O paper scale (per 8 images): prior 224, C5 grid 7x7
    (8, 16, 56, 56, 2),       # Odin: K=16 labels on a 56x56 grid into 56x56 FPN view grids
]


def run_kmeans(args) -> dict:
    from discorep.discovery.align import align_masks_views
    from discorep.discovery.kmeans import batched_kmeans

    torch.set_num_threads(args.threads)
    rows = []
    for B, N, D, K, n_init in KMEANS_CASES[: args.cases or None]:
        x = torch.randn(B, N, D, generator=torch.Generator().manual_seed(0))
        measured = peak_allocated_bytes(partial(batched_kmeans, x, K, iters=args.iters, n_init=n_init))
        rows.append({"kind": "kmeans", "shape": {"B": B, "N": N, "D": D, "K": K, "n_init": n_init},
                     "measured_bytes": measured, "formula_bytes": kmeans_peak_bytes(B, N, D, K, n_init)})
    for B, M, P, g, V in ALIGN_CASES[: args.cases or None]:
        gen = torch.Generator().manual_seed(0)
        labels = torch.randint(0, M, (B, P, P), generator=gen)
        frame = torch.tensor([[0.0, 0.0, float(P), float(P)]]).expand(B, 4)
        boxes = [torch.tensor([[0.1 * P, 0.05 * P, 0.9 * P, 0.8 * P]]).expand(B, 4) for _ in range(V)]
        flips = [torch.rand(B, generator=gen) < 0.5 for _ in range(V)]
        measured = peak_allocated_bytes(partial(align_masks_views, labels, frame, boxes, flips, g, M))
        rows.append({"kind": "masks", "shape": {"B": B, "M": M, "P": P, "g": g, "views": V},
                     "measured_bytes": measured, "formula_bytes": align_peak_bytes(B, M, P, g, V)})
    for r in rows:
        r["ratio"] = r["measured_bytes"] / r["formula_bytes"]
    print(f"{'':<7}{'shape':<46}{'measured MB':>13}{'formula MB':>12}{'ratio':>8}")
    for r in rows:
        shape = " ".join(f"{k}={v}" for k, v in r["shape"].items())
        print(f"{r['kind']:<7}{shape:<46}{r['measured_bytes'] / MB:>13.2f}{r['formula_bytes'] / MB:>12.2f}"
              f"{r['ratio']:>8.3f}")
    return {"rows": rows}


# ------------------------------------------------------------------------------------ train mode
def _children(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/*/stat)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [pid], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _kb(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_monitored(cmd: list[str], env: dict | None = None, cwd: Path = ROOT, interval: float = 0.2) -> dict:
    """Run cmd; peak RSS of the main process (ru_maxrss) and sampled peaks of RSS/PSS over its tree."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_rss = peak_pss = peak_procs = 0
    tic = time.perf_counter()
    output: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        pids = _children(proc.pid)
        peak_rss = max(peak_rss, sum(_kb(f"/proc/{p}/status", "VmRSS") for p in pids))
        peak_pss = max(peak_pss, sum(_kb(f"/proc/{p}/smaps_rollup", "Pss") for p in pids))
        peak_procs = max(peak_procs, len(pids))
        time.sleep(interval)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{''.join(output)[-3000:]}")
    return {"main_peak_rss_mb": usage.ru_maxrss / 1024, "tree_peak_rss_mb": peak_rss / 1024,
            "tree_peak_pss_mb": peak_pss / 1024, "max_processes": peak_procs,
            "wall_s": time.perf_counter() - tic, "output_tail": "".join(output)[-2000:]}


def run_train(args) -> dict:
    from discorep.apps.demodata.scenes import make_scenes

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_scenes(tmp / "scenes", args.images, seed=0, image_size=(args.image_size, args.image_size))
        cmd = [sys.executable, "-m", "discorep.cli", "pretrain", "--config", str(args.config),
               f"data.root={tmp / 'scenes' / 'images'}", f"data.prior_cache={tmp / 'cache'}",
               f"train.epochs={args.epochs}", f"train.out_dir={tmp / 'runs'}", "train.progress=false",
               *args.overrides]
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        r = run_monitored(cmd, env=env)
    r["command"] = shlex.join(["discorep", *cmd[3:]]).replace(str(tmp), "$TMP")
    print(f"command: {r['command']}")
    print(f"peak RSS, main process: {r['main_peak_rss_mb']:.0f} MB; sampled peaks over the main process and "
          f"its {r['max_processes'] - 1} child process(es): RSS {r['tree_peak_rss_mb']:.0f} MB, "
          f"PSS {r['tree_peak_pss_mb']:.0f} MB; wall {r['wall_s']:.0f} s")
    return r


# ------------------------------------------------------------------------------------- step mode
def _vm(field: str) -> float:
    return _kb("/proc/self/status", field) / 1024


def one_step(args) -> dict:
    """In this process: one method at the given scale; RSS before and peak during the steps."""
    from discorep.apps.demodata.scenes import make_scenes
    from discorep.engine import builders
    from discorep.engine.config import Config
    from discorep.engine.configio import load_config
    from discorep.engine.distributed import DistInfo
    from discorep.methods import build_method
    from discorep.methods.base import StepInfo

    if args.threads:
        torch.set_num_threads(args.threads)
    dist = DistInfo(0, 1, 0, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_scenes(tmp / "scenes", args.batch, seed=0, image_size=(args.image_size, args.image_size))
        cfg = load_config(Config, ROOT / "configs" / f"{args.method}.yaml", [
            f"data.root={tmp / 'scenes' / 'images'}", f"data.prior_cache={tmp / 'cache'}", "data.num_workers=0",
            f"model.arch={args.arch}", f"views.size={args.size}", f"views.raw_size={args.size}",
            f"views.spanning_size={2 * args.size}", f"train.batch_size={args.batch}", "train.device=cpu",
            "train.precision=fp32", "train.progress=false"])
        dataset = builders.build_dataset(cfg, dist)
        loader, _ = builders.build_loader(cfg, dataset, dist, start_step=0, total_steps=1)
        batch = next(iter(loader))
    torch.manual_seed(0)
    method = build_method(cfg)
    method.train()
    opt = builders.build_optimizer_for(cfg, method.trained_modules())
    params_mb = sum(p.numel() * p.element_size() for p in method.parameters()) / MB
    before = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak RSS) to the current RSS
    times = []
    for step in range(args.steps):
        tic = time.perf_counter()
        info = StepInfo(step, 0.0, cfg.train.epochs, 0)
        loss, _ = method(batch, info)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(info, 0.99, 1000)
        times.append(time.perf_counter() - tic)
    return {"method": args.method, "arch": args.arch, "batch": args.batch, "size": args.size,
            "prior_num": int(batch.get("prior_num", 0)), "params_mb": params_mb, "rss_before_step_mb": before,
            "peak_rss_mb": _vm("VmHWM"), "step_over_before_mb": _vm("VmHWM") - before,
            "step_s": statistics.median(times), "threads": torch.get_num_threads()}


def run_steps(args) -> dict:
    rows = {}
    for method in [m for m in args.methods.split(",") if m]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "_one_step", "--method", method, "--arch", args.arch,
               "--batch", str(args.batch), "--size", str(args.size), "--steps", str(args.steps),
               "--image-size", str(args.image_size), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        rows[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'method':<8}{'arch':<10}{'batch':>6}{'size':>6}{'params MB':>11}{'RSS before':>12}{'peak RSS':>10}"
          f"{'step adds':>11}{'s/step':>8}")
    for m, r in rows.items():
        print(f"{m:<8}{r['arch']:<10}{r['batch']:>6}{r['size']:>6}{r['params_mb']:>11.0f}"
              f"{r['rss_before_step_mb']:>12.0f}{r['peak_rss_mb']:>10.0f}{r['step_over_before_mb']:>11.0f}"
              f"{r['step_s']:>8.1f}")
    return {"rows": rows}


# ------------------------------------------------------------------------------------------- cli
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    k = sub.add_parser("kmeans", help="measured peak allocation of k-means and mask alignment vs the formulas")
    k.add_argument("--iters", type=int, default=10, help="k-means iterations (the peak does not depend on it)")
    k.add_argument("--cases", type=int, default=0, help="only the first N cases of each kind (0: all)")
    k.add_argument("--threads", type=int, default=1)
    t = sub.add_parser("train", help="peak RSS of the demo's pretraining")
    t.add_argument("--config", type=Path, default=Path("configs/r2o_cpu_demo.yaml"), help="relative to the repo")
    t.add_argument("--epochs", type=float, default=1)
    t.add_argument("--images", type=int, default=256, help="generated scenes (the demo: 256)")
    t.add_argument("--image-size", type=int, default=192)
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="extra config overrides")
    for name in ("step", "_one_step"):
        s = sub.add_parser(name, **({"help": "peak RSS of training steps at a given scale"} if name == "step" else {}))
        if name == "step":
            s.add_argument("--methods", default="byol,r2o")
            s.add_argument("--timeout", type=float, default=900.0)
        else:
            s.add_argument("--method", required=True)
        s.add_argument("--arch", default="resnet50", choices=("resnet18", "resnet50"))
        s.add_argument("--batch", type=int, default=32)
        s.add_argument("--size", type=int, default=224)
        s.add_argument("--steps", type=int, default=1)
        s.add_argument("--image-size", type=int, default=256, help="side of the generated scenes")
        s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    g = sub.add_parser("segments", help="Odin's discrete-mode segment store: ImageNet formula and a measured case")
    g.add_argument("--images", type=int, default=2048, help="images of the measured rank's shard")
    g.add_argument("--batch", type=int, default=64)
    for s in (k, t, sub.choices["step"], g):
        s.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    return p


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.mode == "_one_step":
        result = one_step(args)
        print(json.dumps(result))
        return result
    command = shlex.join(["python", "benchmarks/memory.py", *argv])
    print("command: " + command)
    run = {"kmeans": run_kmeans, "train": run_train, "step": run_steps, "segments": run_segments}[args.mode]
    result = {"mode": args.mode, "command": command, **run(args),
              "machine": {"cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__,
                          "ru_maxrss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
