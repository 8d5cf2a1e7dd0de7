"""Region-prior cache build speed vs plain SLIC at full resolution, and its scaling over workers.

    python benchmarks/priors.py                          # 24 generated 480x640 scenes, workers 1,2
    python benchmarks/priors.py --images 64 --image-size 480x640 --workers 1,2,4

Baseline: `skimage.segmentation.slic(image, n_segments=100, compactness=10, start_label=0,
channel_axis=-1)` on the full-size decoded image, one image after another in this process (decode
included, as the cache includes it). Measured: `RegionPriorCache.build` of the same images into an
empty cache (decode, the 224x224 bilinear copy, SLIC on it as R2O A.1 does, relabelling, the
compressed, fsynced `.npz` write), with `num_workers` 1 (in this process) and 2, ... (its process
pool); plus a second build over the filled cache (every file only checked and loaded).

Reported per worker count: images/s, the speed-up over the baseline, the speed-up per core
(speed-up / workers; the issue's target is ≥ 1.5x per core) and the scaling over 1 worker. All from
one run; with fewer free cores than workers the scaling shows the machine, not the code.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from skimage.segmentation import slic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from discorep.apps.demodata.scenes import make_scenes
from discorep.data.images import load_rgb
from discorep.data.prior_cache import RegionPriorCache

PARAMS = {"n_segments": 100, "compactness": 10.0}


def baseline(paths: list[Path]) -> dict:
    """Decode + full-resolution SLIC per image, sequentially in this process."""
    slic_s = 0.0
    tic = time.perf_counter()
    for p in paths:
        image = np.asarray(load_rgb(p))
        t = time.perf_counter()
        slic(image, n_segments=PARAMS["n_segments"], compactness=PARAMS["compactness"], start_label=0,
             channel_axis=-1)
        slic_s += time.perf_counter() - t
    total = time.perf_counter() - tic
    return {"seconds": total, "images_per_s": len(paths) / total, "slic_only_s": slic_s}


def cache_build(paths: list[Path], cache_root: Path, workers: int) -> dict:
    cache = RegionPriorCache(cache_root, "slic", dict(PARAMS))  # resize defaults to 224 (R2O A.1)
    items = [(p.name, p) for p in paths]
    tic = time.perf_counter()
    stats = cache.build(items, num_workers=workers, progress=False)
    total = time.perf_counter() - tic
    if stats.failed or stats.computed != len(paths):
        raise RuntimeError(f"cache build did not compute every image: {stats}")
    tic = time.perf_counter()
    again = cache.build(items, num_workers=workers, progress=False)
    warm = time.perf_counter() - tic
    assert again.loaded == len(paths), again
    return {"seconds": total, "images_per_s": len(paths) / total, "warm_seconds": warm,
            "warm_images_per_s": len(paths) / warm}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24, help="generated scenes")
    p.add_argument("--image-size", default="480x640", help="HxW of the generated scenes")
    p.add_argument("--workers", default="1,2", help="comma-separated num_workers for the cache build")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "benchmarks/priors.py", *(sys.argv[1:] if argv is None else argv)])
    h, w = (int(s) for s in args.image_size.lower().split("x"))
    workers = [int(x) for x in args.workers.split(",") if x != ""]
    if not workers or min(workers) < 1:
        raise SystemExit("--workers: give counts >= 1 (1 runs in this process)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_scenes(tmp / "scenes", args.images, seed=0, image_size=(h, w))
        paths = sorted((tmp / "scenes" / "images").glob("*.png"))
        base = baseline(paths)
        results = {str(n): cache_build(paths, tmp / f"cache_{n}", n) for n in workers}
    first = results[str(workers[0])]["images_per_s"]
    for n, r in results.items():
        r["speedup"] = r["images_per_s"] / base["images_per_s"]
        r["speedup_per_core"] = r["speedup"] / int(n)
        r["scaling_vs_first"] = r["images_per_s"] / first
    env = {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
           "torch": torch.__version__, "command": command}
    out = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "environment": env, "params": PARAMS, "baseline": base, "results": results, "target_per_core": 1.5}
    report(out, h, w)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    return out


def report(out: dict, h: int, w: int) -> None:
    b, env = out["baseline"], out["environment"]
    n = out["settings"]["images"]
    print(f"cpus={env['cpus']}; {n} scenes {h}x{w}; SLIC n_segments={PARAMS['n_segments']} "
          f"compactness={PARAMS['compactness']}")
    print("command: " + env["command"])
    print(f"baseline: decode + skimage slic at {h}x{w}, one process: {b['images_per_s']:.2f} images/s "
          f"({b['seconds']:.2f} s, of which SLIC {b['slic_only_s']:.2f} s)")
    print(f"{'workers':>8}{'images/s':>10}{'x baseline':>12}{'x per core':>12}{'x first':>12}"
          f"{'warm img/s':>12}")
    for k, r in out["results"].items():
        verdict = "PASS" if r["speedup_per_core"] >= out["target_per_core"] else "MISS"
        print(f"{k:>8}{r['images_per_s']:>10.2f}{r['speedup']:>12.2f}{r['speedup_per_core']:>12.2f}"
              f"{r['scaling_vs_first']:>12.2f}{r['warm_images_per_s']:>12.1f}   per-core target "
              f">= {out['target_per_core']}x: {verdict}")


if __name__ == "__main__":
    main()
