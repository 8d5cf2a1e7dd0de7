"""`discorep discover` images/s on CPU against the bare backbone forward on the same images.

    python benchmarks/discover.py --arch resnet18 --threads 2
    python benchmarks/discover.py --arch resnet50 --threads 2 --images 32

Runs the real `run_discover` (decode, resize, encode, k-means for every K, upsample, npz + PNG writing)
on generated photo-like scenes, with its stages timed by wrapping the functions it calls. The main
thread's stages: decode (`_load_batch`: read + resize), forward (`dense_features`) and "write wait" (the
main thread waiting for the writer thread: `BackgroundWriter._collect_oldest`); "other" is the rest of the
wall time, i.e. wall − (decode + forward + write wait), the wall time leaving out the one-time model
loading (reported as load_model; images/s leave it out too). Discover's other threads overlap those
stages, their busy time reported apart and not part of the sum: its worker thread's superpixels
(`batch_superpixels`) and clustering (k-means, `batched_kmeans_ks`, or refinement, `refine_labels`), and
its writer thread's writing (`_write_outputs`: upsampling, npz, overlay PNG).

The baseline is the bare backbone forward (`dense_features`, same model, size, batch) on the same images
already decoded and resized: the issue's target is discover ≥ 50 % of its images/s. Both are timed in
one run, after one untimed warm-up batch; timings are only comparable on a quiet machine. discover runs
under the OpenMP wait policy `discorep discover` sets (`discorep/omp.py`: PASSIVE unless the environment
says otherwise; `--omp-runtime-default` measures discover under the runtime's default instead),
and the baseline in a child process under the environment this one started with, so that the policy
discover prefers never slows (or speeds) the forward it is compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from discorep.omp import WAIT_POLICY, prefer_passive_waits  # noqa: E402  (no torch)

# As `discorep discover` does, before torch loads (discorep/omp.py); `--omp-runtime-default` measures
# discover under the OpenMP runtime's own policy instead (read here: the flag must act before torch loads).
# True when this process set it (no user policy, torch not loaded yet): the baseline's child then drops it.
_POLICY_SET_HERE = ("--omp-runtime-default" not in sys.argv and WAIT_POLICY not in os.environ
                    and prefer_passive_waits() is not None)

import torch  # noqa: E402

from discorep.apps.demodata.scenes import make_scenes
from discorep.data.images import list_images, load_rgb
from discorep.eval import discover as discover_mod
from discorep.eval import refine as refine_mod
from discorep.eval import segment as segment_mod
from discorep.eval.backbone import load_model, normalize_images
from discorep.models.dense import dense_features

TARGET = 0.50
# The main thread's stages: with "other" they add up to the run's wall time.
STAGES = ("load_model", "decode", "forward", "write wait")
# Busy time of discover's worker threads (superpixels, then clustering: k-means or refinement) and writer
# thread, overlapping the main thread's stages. (In checkouts before the clustering thread, "kmeans" and
# "refine" ran on the main thread: `_discover` then counts them there.)
OVERLAPPED = ("superpixels", "kmeans", "refine", "write")


def add_workload_args(p: argparse.ArgumentParser, refine_default: str) -> None:
    """The discover workload both discover benchmarks run: model, generated scenes, discover's settings."""
    p.add_argument("--arch", default="resnet18", help="random:<arch> weights (speed does not depend on them)")
    p.add_argument("--images", type=int, default=32, help="generated scenes")
    p.add_argument("--image-size", default="480x640", help="HxW of the generated scenes (files discover reads)")
    p.add_argument("--size", type=int, default=224, help="discover --size")
    p.add_argument("--ks", default="1,2,4,8,16,32,64,128", help="discover --k")
    p.add_argument("--batch", type=int, default=8, help="discover --batch-size")
    p.add_argument("--refine", default=refine_default, choices=("none", "slic", "felzenszwalb"),
                   help="discover --refine (discover's own default is slic; none = the grid alone)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_args(p, refine_default="none")
    p.add_argument("--features", default="c5", help="discover --features")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--omp-runtime-default", action="store_true",
                   help="leave OMP_WAIT_POLICY unset for discover too (discorep discover sets PASSIVE)")
    p.add_argument("--forward-baseline", default=None, help=argparse.SUPPRESS)  # the child of _baseline_in_child
    return p


class _Timers:
    """Wraps module functions so every call's wall time is added to a named stage. Each stage is timed in
    one thread only, so no two threads update one entry."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, module: object, name: str, stage: str) -> None:
        fn = getattr(module, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.ms[stage] += (time.perf_counter() - t0) * 1e3

        self._undo.append((module, name, fn))
        setattr(module, name, timed)

    def restore(self) -> None:
        for module, name, fn in reversed(self._undo):
            setattr(module, name, fn)
        self._undo.clear()


def _forward_only(model, paths: list[Path], size: int, batch: int, features: str) -> float:
    """ms of dense_features alone over all images (decoded and resized beforehand, not timed)."""
    tensors = [segment_mod.prepare(load_rgb(p), size) for p in paths]
    chunks = [torch.stack(tensors[i:i + batch]) for i in range(0, len(tensors), batch)]
    with torch.no_grad():
        dense_features(model, normalize_images(chunks[0]), features, project="fpn")  # warm-up
        t0 = time.perf_counter()
        for x in chunks:
            dense_features(model, normalize_images(x), features, project="fpn")
    return (time.perf_counter() - t0) * 1e3


def _discover(args, images: Path, out: Path, timers: _Timers) -> tuple[float, tuple[str, ...]]:
    """ms of one run_discover over every image, its stages recorded in `timers`; and the stages timed on
    the main thread (the others overlap them)."""
    kwargs = dict(checkpoint=f"random:{args.arch}", images=images, out=out, ks=args.ks, size=args.size,
                  features=args.features, device="cpu", batch_size=args.batch)
    kwargs["refine"] = args.refine
    main_thread = list(STAGES)
    timers.wrap(discover_mod, "load_model_for_discover", "load_model")
    timers.wrap(discover_mod, "_load_batch", "decode")
    timers.wrap(segment_mod, "dense_features", "forward")
    # Checkouts before all-K-from-one-seeding call batched_kmeans once per K.
    timers.wrap(segment_mod, "batched_kmeans_ks" if hasattr(segment_mod, "batched_kmeans_ks") else "batched_kmeans",
                "kmeans")
    timers.wrap(segment_mod, "refine_labels", "refine")
    if hasattr(discover_mod, "_cluster"):  # clustering on the worker thread, after the batch's superpixels
        timers.wrap(refine_mod, "batch_superpixels", "superpixels")
    else:
        main_thread += ["kmeans", "refine"]
    try:
        from discorep.eval.background import BackgroundWriter
    except ImportError:  # checkouts before the writer thread write inline: all of it is waiting
        timers.wrap(discover_mod, "_write_outputs", "write wait")
    else:
        timers.wrap(discover_mod, "_write_outputs", "write")  # called on the writer thread
        timers.wrap(BackgroundWriter, "_collect_oldest", "write wait")
    try:
        t0 = time.perf_counter()
        discover_mod.run_discover(**kwargs)
        return (time.perf_counter() - t0) * 1e3, tuple(main_thread)
    finally:
        timers.restore()


def _policy() -> str:
    return os.environ.get(WAIT_POLICY) or "runtime default"


def _baseline_in_child(args, images: Path) -> dict:
    """`_forward_only` in a fresh process under the environment this one started with: the OpenMP wait
    policy discover prefers is set for this process only (discorep/omp.py), and the bare forward is
    measured as a plain script runs it. Returns {"forward_ms", "omp_wait_policy"} (the child's)."""
    env = dict(os.environ)
    if _POLICY_SET_HERE:
        env.pop(WAIT_POLICY, None)
    # --omp-runtime-default: the child must not set the policy this process set for discover.
    cmd = [sys.executable, __file__, "--forward-baseline", str(images), "--omp-runtime-default", "--arch", args.arch,
           "--size", str(args.size), "--batch", str(args.batch), "--features", args.features,
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.forward_baseline:
        model = load_model(f"random:{args.arch}")
        model.encoder.eval()
        ms = _forward_only(model, list_images(Path(args.forward_baseline)), args.size, args.batch, args.features)
        child = {"forward_ms": ms, "omp_wait_policy": _policy(), "threads": torch.get_num_threads()}
        print(json.dumps(child))
        return child
    h, w = (int(v) for v in args.image_size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_scenes(root / "scenes", args.images, seed=0, image_size=(h, w))
        images = root / "scenes" / "images"
        paths = list_images(images)
        model = load_model(f"random:{args.arch}")
        model.encoder.eval()
        warm = root / "warm"
        warm.mkdir()
        for p in paths[:args.batch]:  # one untimed batch: first-call costs of every stage
            (warm / p.name).write_bytes(p.read_bytes())
        _discover(args, warm, root / "warm_out", _Timers())
        baseline = _baseline_in_child(args, images)
        forward_ms = baseline["forward_ms"]
        timers = _Timers()
        total_ms, main_thread = _discover(args, images, root / "out", timers)
    n = len(paths)
    stages = {s: round(timers.ms.get(s, 0.0), 1) for s in main_thread}
    stages["other"] = round(total_ms - sum(stages.values()), 1)  # wall − load_model − the other stages
    overlapped = {s: round(timers.ms.get(s, 0.0), 1) for s in OVERLAPPED if s not in main_thread}
    # Throughput over the images: the one-time model construction/loading is reported, not counted.
    discover_ips, forward_ips = n / (total_ms - stages["load_model"]) * 1e3, n / forward_ms * 1e3
    result = {
        "environment": {"command": "python benchmarks/discover.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
                        "torch": torch.__version__, "threads": torch.get_num_threads(),
                        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "omp_wait_policy": _policy()},
        "images": n, "image_size": [h, w], "size": args.size, "ks": args.ks, "features": args.features,
        "arch": args.arch, "batch": args.batch, "refine": args.refine,
        "discover": {"ms": round(total_ms, 1), "images_per_s": discover_ips, "stages_ms": stages,
                     "overlapped_ms": overlapped},
        "forward": {"ms": round(forward_ms, 1), "images_per_s": forward_ips,
                    "omp_wait_policy": baseline["omp_wait_policy"], "threads": baseline["threads"]},
        "ratio": discover_ips / forward_ips, "target": TARGET,
    }
    result["meets_target"] = result["ratio"] >= TARGET
    report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def report(r: dict) -> None:
    d, f = r["discover"], r["forward"]
    print(f"{r['environment']['command']}  (torch {r['environment']['torch']}, {r['environment']['threads']} "
          f"threads, {r['environment']['cpu_capability']}, OMP_WAIT_POLICY {r['environment'].get('omp_wait_policy')})")
    print(f"{r['arch']} at {r['size']} px, {r['features']}, K={r['ks']}, batch {r['batch']}, {r['images']} images "
          f"of {r['image_size'][0]}x{r['image_size'][1]}, refine={r['refine']}")
    print(f"  bare forward : {f['ms']:9.1f} ms  {f['images_per_s']:7.2f} images/s  (own process, "
          f"OMP_WAIT_POLICY {f.get('omp_wait_policy')}, {f.get('threads')} threads)")
    print(f"  discover     : {d['ms']:9.1f} ms  {d['images_per_s']:7.2f} images/s  "
          f"= {r['ratio']:.2f} of the forward (target {r['target']:.2f})")
    print("  main thread (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in d["stages_ms"].items()))
    print("  other threads (ms, overlapping the main thread): "
          + ", ".join(f"{k} {v:.1f}" for k, v in d["overlapped_ms"].items()))
    print(f"RESULT discover_vs_forward={r['ratio']:.2f}")


if __name__ == "__main__":
    main()
