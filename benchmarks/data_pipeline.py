"""Data pipeline throughput: PretrainDataset + the engine's DataLoader, images/s for 0, 1, 2 workers.

    python benchmarks/data_pipeline.py                      # the CPU demo's R2O config on 192-px scenes
    python benchmarks/data_pipeline.py --config configs/r2o.yaml --image-size 480 --batch 32

Every sample is what training loads: decode the file, sample the two BYOL views and the extra views
the config's method reads (`needs_views`: R2O's raw view, Odin's spanning view) with their boxes, and
read the region prior from the on-disk cache (built once
before timing, as `discorep pretrain` does; its build time is printed too). The loader is the engine's
own (`engine.builders.build_loader`): `persistent_workers` when workers > 0, `prefetch_factor` 4, pinned
memory only when the device is CUDA. Images/s are steady-state rates: the first max(1, workers) batches,
computed while the workers start, are not timed; "per worker" divides by the workers doing the work
(the main process when workers = 0). The main process only consumes here; in training it also computes.

An in-process breakdown (median ms per sample) of the three parts is printed as well: decode, views,
prior (cache read + nearest resize to data.prior_size).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from discorep.apps.demodata.scenes import make_scenes
from discorep.data.images import load_rgb
from discorep.data.labelmaps import resize_nearest
from discorep.data.pretrain import sample_seed
from discorep.engine import builders
from discorep.engine.config import Config
from discorep.engine.configio import load_config
from discorep.engine.distributed import DistInfo

ROOT = Path(__file__).resolve().parents[1]


def loader_images_per_s(cfg: Config, dataset, dist: DistInfo, batches: int) -> dict:
    """Images/s of the engine's loader in steady state.

    With W workers the first W batches are computed in parallel while the workers start, so they
    arrive together; the rate is taken from the arrival of batch max(1, W) - 1 to the last one,
    counting the batches after it (W workers each finish (n - W) / W more batches in that span).
    """
    skip = max(1, cfg.data.num_workers)
    if batches <= skip:
        raise ValueError(f"need --batches > {skip} for {cfg.data.num_workers} workers")
    tic0 = time.perf_counter()
    loader, _ = builders.build_loader(cfg, dataset, dist, start_step=0, total_steps=batches)
    arrivals, sizes, keys = [], [], []
    for batch in loader:
        arrivals.append(time.perf_counter())
        sizes.append(batch["size"])
        keys = keys or sorted(k for k in batch if k not in ("skipped", "size"))
    del loader  # stops persistent workers
    elapsed = arrivals[-1] - arrivals[skip - 1]
    images = sum(sizes[skip:])
    return {"images_per_s": images / elapsed, "images": images, "seconds": elapsed,
            "startup_s": arrivals[0] - tic0, "batch_keys": keys}


def breakdown(dataset, samples: int) -> dict[str, float]:
    """Median ms per sample for decode, views and prior, measured in this process."""
    parts: dict[str, list[float]] = {"decode": [], "views": [], "prior": []}
    for i in range(min(samples, len(dataset))):
        t0 = time.perf_counter()
        image = load_rgb(dataset.paths[i])
        t1 = time.perf_counter()
        dataset.views(image, seed=sample_seed(0, 0, i))
        t2 = time.perf_counter()
        if dataset.prior_cache is not None:
            labels = dataset.prior_cache.get(dataset.prior_key(i), dataset.paths[i])
            resize_nearest(torch.from_numpy(np.asarray(labels, dtype=np.int64)), dataset.prior_size, dataset.prior_size)
        t3 = time.perf_counter()
        parts["decode"].append((t1 - t0) * 1e3)
        parts["views"].append((t2 - t1) * 1e3)
        parts["prior"].append((t3 - t2) * 1e3)
    out = {k: statistics.median(v) for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "r2o_cpu_demo.yaml"),
                   help="training config whose data, views and prior are measured")
    p.add_argument("--batch", type=int, default=16, help="train.batch_size for the loader")
    p.add_argument("--batches", type=int, default=16,
                   help="batches per worker count (the first max(1, workers) are not timed)")
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    p.add_argument("--image-size", default="192", help="side (or HxW) of the generated scenes")
    p.add_argument("--breakdown-samples", type=int, default=16)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in this process (DataLoader workers always use 1)")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "benchmarks/data_pipeline.py", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(args.threads)
    workers = [int(w) for w in args.workers.split(",") if w != ""]
    size = [int(s) for s in args.image_size.lower().split("x")]
    hw = (size[0], size[-1])
    dist = DistInfo(0, 1, 0, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_scenes(tmp / "scenes", args.batch * args.batches, seed=0, image_size=hw)
        cfg = load_config(Config, args.config, [
            f"data.root={tmp / 'scenes' / 'images'}", f"data.prior_cache={tmp / 'cache'}",
            f"train.batch_size={args.batch}", "train.device=cpu", "train.progress=false"])
        tic = time.perf_counter()
        dataset = builders.build_dataset(cfg, dist)  # builds the region-prior cache, as training does
        cache_s = time.perf_counter() - tic
        parts = breakdown(dataset, args.breakdown_samples)
        results = {}
        for w in workers:
            cfg.data.num_workers = w
            r = loader_images_per_s(cfg, dataset, dist, args.batches)
            r["per_worker_images_per_s"] = r["images_per_s"] / max(1, w)
            results[str(w)] = r
    base = results[str(workers[0])]["images_per_s"]
    for r in results.values():
        r["speedup_vs_first"] = r["images_per_s"] / base
    env = {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "command": command,
           "pin_memory": False, "persistent_workers": "when workers > 0", "prefetch_factor": 4}
    out = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "environment": env, "image_hw": list(hw), "prior": cfg.data.prior, "prior_cache_build_s": cache_s,
           "breakdown_ms_per_sample": parts, "results": results}
    report(out, cfg)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    return out


def report(out: dict, cfg: Config) -> None:
    env = out["environment"]
    v = cfg.views
    print(f"cpus={env['cpus']} torch={env['torch']} images {out['image_hw'][0]}x{out['image_hw'][1]}, views "
          f"{v.size}/{v.spanning_size}/{v.raw_size} px, prior {out['prior']} at {cfg.data.prior_size} px, "
          f"batch {cfg.train.batch_size}")
    print("command: " + env["command"])
    print(f"prior cache built in {out['prior_cache_build_s']:.2f} s (before timing)")
    b = out["breakdown_ms_per_sample"]
    print(f"in-process, median ms per sample: decode {b['decode']:.1f}, views {b['views']:.1f}, "
          f"prior {b['prior']:.1f}, total {b['total']:.1f} (-> {1000 / b['total']:.1f} images/s on one core)")
    print(f"{'workers':>8}{'images/s':>10}{'per worker':>12}{'x first':>9}{'start-up s':>12}")
    for w, r in out["results"].items():
        print(f"{w:>8}{r['images_per_s']:>10.1f}{r['per_worker_images_per_s']:>12.1f}"
              f"{r['speedup_vs_first']:>9.2f}{r['startup_s']:>12.2f}")


if __name__ == "__main__":
    main()
