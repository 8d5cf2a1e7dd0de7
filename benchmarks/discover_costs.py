"""What `discorep discover` costs per image, stage by stage, and the ceiling that puts on its speed.

    python benchmarks/discover_costs.py --arch resnet18 --refine slic
    python benchmarks/discover_costs.py --arch resnet50 --refine slic --images 16

Each stage of discover runs alone on one thread over the same generated scenes (the work, in CPU ms
per image): decode (read + resize), forward (`dense_features`), superpixels (`batch_superpixels`),
the rest of refinement (pooling, k-means for every K, painting; `refine_labels` given the superpixels)
or, unrefined, the k-means (`batched_kmeans_ks`), and writing (`_write_outputs`: upsampling, npz,
overlay PNG). The forward is also timed on `--cores` threads, as `benchmarks/discover.py` times its
baseline. However well the stages overlap, `--cores` cores cannot run discover faster than
Σ stage ms / cores per image, so

    ceiling = (forward ms per image on `--cores` threads) / (Σ one-thread stage ms per image / cores)

bounds `benchmarks/discover.py`'s ratio from above (counting the forward's one-thread time as its CPU
cost; on several threads it costs at least that). Ends with `RESULT discover_ceiling=<x>`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.discover import add_workload_args  # noqa: E402
from discorep.apps.demodata.scenes import make_scenes
from discorep.data.images import list_images, load_rgb
from discorep.discovery.kmeans import batched_kmeans_ks
from discorep.discovery.random import image_seeds
from discorep.eval import discover as discover_mod
from discorep.eval.backbone import load_model, normalize_images
from discorep.eval.refine import Refine, batch_superpixels, refine_labels, to_uint8
from discorep.eval.segment import parse_ks, prepare
from discorep.models.dense import dense_features


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_args(p, refine_default="slic")
    p.add_argument("--cores", type=int, default=2, help="cores the ceiling is computed for")
    return p


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


def measure(args) -> dict[str, float]:
    """CPU ms per image of every stage (one thread), and the forward's ms per image on args.cores threads."""
    h, w = (int(v) for v in args.image_size.lower().split("x"))
    ks, refine = parse_ks(args.ks), Refine(args.refine)
    ms: dict[str, float] = dict.fromkeys(["decode", "forward", "superpixels", "refine rest / k-means", "write"], 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        make_scenes(Path(tmp) / "scenes", args.images, seed=0, image_size=(h, w))
        paths = list_images(Path(tmp) / "scenes" / "images")
        model = load_model(f"random:{args.arch}")
        model.encoder.eval()
        out = Path(tmp) / "out"
        torch.set_num_threads(1)
        batches = [paths[i:i + args.batch] for i in range(0, len(paths), args.batch)]
        with torch.no_grad():
            dense_features(model, normalize_images(torch.stack([prepare(load_rgb(p), args.size)
                                                                for p in batches[0]])), "c5", project="fpn")
            encoded = []
            for chunk in batches:
                t, pics = _timed(lambda: [load_rgb(p) for p in chunk])
                t2, images = _timed(lambda: torch.stack([prepare(p, args.size) for p in pics]))
                ms["decode"] += t + t2
                t, feats = _timed(lambda: dense_features(model, normalize_images(images), "c5", project="fpn"))
                ms["forward"] += t
                seeds = image_seeds(0, torch.arange(len(chunk)))
                if refine.active:
                    t, maps = _timed(lambda: batch_superpixels(to_uint8(images), refine))
                    ms["superpixels"] += t
                    t, (labels, _) = _timed(lambda: refine_labels(feats, images, ks, refine, seeds, maps=_done(maps)))
                else:
                    points = feats.flatten(2).transpose(1, 2)
                    t, res = _timed(lambda: batched_kmeans_ks(points, [min(k, points.shape[1]) for k in ks], seed=seeds))
                    labels = {k: res[min(k, points.shape[1])].labels.view(len(chunk), *feats.shape[-2:]) for k in ks}
                ms["refine rest / k-means"] += t
                for b, (p, pic) in enumerate(zip(chunk, pics)):
                    job = discover_mod._Job(path=p, name=p.stem, image_id=b)
                    t, _ = _timed(lambda: discover_mod._write_outputs(out, job, pic, {k: v[b] for k, v in labels.items()},
                                                                      ks, discover_mod.choose_overlay_k(ks, None)))
                    ms["write"] += t
                encoded.append(images)
            torch.set_num_threads(args.cores)
            t, _ = _timed(lambda: [dense_features(model, normalize_images(x), "c5", project="fpn") for x in encoded])
    per_image = {k: v / len(paths) for k, v in ms.items()}
    per_image["forward on cores"] = t / len(paths)
    return per_image


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    cost = measure(args)
    work = sum(v for k, v in cost.items() if k != "forward on cores")
    ceiling = cost["forward on cores"] / (work / args.cores)
    print(f"{args.arch} at {args.size} px, refine={args.refine}, {args.images} images of {args.image_size}, "
          f"K={args.ks}; CPU ms per image, one thread:")
    for k, v in cost.items():
        if k != "forward on cores":
            print(f"  {k:22s} {v:7.1f}  ({100 * v / work:4.1f} %)")
    print(f"  {'total':22s} {work:7.1f}   -> at best {work / args.cores:.1f} ms per image on {args.cores} cores")
    print(f"  forward on {args.cores} threads: {cost['forward on cores']:.1f} ms per image")
    print(f"RESULT discover_ceiling={ceiling:.2f}")
    return {"ms_per_image": cost, "work_ms_per_image": work, "cores": args.cores, "ceiling": ceiling}


if __name__ == "__main__":
    main()
