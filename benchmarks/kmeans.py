"""Benchmark: batched torch k-means vs per-problem scikit-learn and faiss-cpu loops.

Two cases, same data and K for every method (points L2-normalised first, as in Odin A.4 / R2O):
  * odin: B images × N points each, K clusters per image (B independent problems).
  * r2o:  B images × R regions pooled into one problem of B·R points (R2O clusters the whole batch).

Data are Gaussian blobs on the unit sphere so inertia comparisons are meaningful. Inertia is reported
as the mean over problems of Σ‖x − nearest centroid‖², recomputed the same way for all methods.

    python benchmarks/kmeans.py --device cpu
    python benchmarks/kmeans.py --device cuda --repeats 5
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    from discorep.discovery.kmeans import batched_kmeans
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from discorep.discovery.kmeans import batched_kmeans


def make_blobs(problems: int, points: int, dim: int, centers: int, spread: float, seed: int) -> torch.Tensor:
    """(problems, points, dim) unit vectors drawn around `centers` random directions per problem."""
    gen = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(problems, centers, dim, generator=gen), dim=-1)
    which = torch.randint(0, centers, (problems, points), generator=gen)
    x = c.gather(1, which[..., None].expand(-1, -1, dim))
    x = x + spread / dim ** 0.5 * torch.randn(problems, points, dim, generator=gen)
    return F.normalize(x, dim=-1)


def inertia_of(x: np.ndarray, centroids: np.ndarray) -> float:
    """Σ over points of the squared distance to the nearest centroid."""
    d = (x ** 2).sum(1)[:, None] - 2 * x @ centroids.T + (centroids ** 2).sum(1)[None]
    return float(np.maximum(d.min(1), 0).sum())


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object]:
    """Best wall time of `repeats` calls (after one warm-up call) and the last result."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_torch(x: torch.Tensor, K: int, args: argparse.Namespace,
              device: torch.device, algorithm: str = "auto") -> tuple[float, float, int]:
    xd = x.to(device)
    t, res = timed(lambda: batched_kmeans(xd, K, iters=args.iters, tol=args.tol, seed=args.seed,
                                         n_init=args.n_init, algorithm=algorithm), args.repeats, device)
    xs, cs = x.numpy(), res.centroids.cpu().numpy()
    return t, float(np.mean([inertia_of(xs[b], cs[b]) for b in range(len(xs))])), res.n_iter


def run_sklearn(x: torch.Tensor, K: int, args: argparse.Namespace) -> tuple[float, float, float]:
    from sklearn.cluster import KMeans

    xs = x.numpy()

    def loop() -> list:
        return [KMeans(K, init="k-means++", n_init=args.n_init, max_iter=args.iters, tol=args.tol,
                       random_state=args.seed).fit(p) for p in xs]

    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    with threadpool_limits(torch.get_num_threads()):  # same thread budget as torch and faiss
        t, models = timed(loop, args.repeats, torch.device("cpu"))
    inertia = float(np.mean([inertia_of(p, m.cluster_centers_) for p, m in zip(xs, models)]))
    return t, inertia, float(np.mean([m.n_iter_ for m in models]))


FAISS_INITS = {"random": "ClusteringInitMethod_RANDOM", "k-means++": "ClusteringInitMethod_KMEANS_PLUS_PLUS",
               "afk-mc2": "ClusteringInitMethod_AFK_MC2"}
# Seedings computed outside faiss and passed as init_centroids (their time is part of faiss's): greedy
# k-means++ from scikit-learn on all points, or on the same 16·K-point subsample rule discorep uses.
SKLEARN_SEEDINGS = ("sklearn-greedy-k-means++", "sklearn-greedy-k-means++-on-16K-subsample")


def sklearn_seeding(p: np.ndarray, K: int, init: str, seed: int) -> np.ndarray:
    from sklearn.cluster import kmeans_plusplus

    if init == SKLEARN_SEEDINGS[1] and len(p) > 16 * K:
        p = p[np.random.default_rng(seed).choice(len(p), 16 * K, replace=False)]
    return kmeans_plusplus(p, K, random_state=seed)[0]


def run_faiss(x: torch.Tensor, K: int, args: argparse.Namespace, init: str = "random",
              nredo: int = 1) -> tuple[float, float, float]:
    """Per-problem faiss.Kmeans loop; `init` one of FAISS_INITS (faiss >= 1.9 seeds natively), `nredo`
    runs per problem keeping the best. Returns (seconds, mean inertia, mean iterations)."""
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    xs = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    method = getattr(faiss, FAISS_INITS.get(init, "ClusteringInitMethod_RANDOM"))

    def loop() -> list:
        out = []
        for p in xs:
            # No subsampling at these sizes; faiss stops once the objective no longer changes.
            km = faiss.Kmeans(p.shape[1], K, niter=args.iters, nredo=nredo, seed=args.seed + 1,
                              min_points_per_centroid=1, max_points_per_centroid=1 << 20)
            km.cp.init_method = method
            start = sklearn_seeding(p, K, init, args.seed) if init in SKLEARN_SEEDINGS else None
            km.train(p, init_centroids=start)
            out.append((km.centroids.copy(), len(km.obj) / nredo))
        return out

    t, fits = timed(loop, args.repeats, torch.device("cpu"))
    inertia = float(np.mean([inertia_of(p, c) for p, (c, _) in zip(xs, fits)]))
    return t, inertia, float(np.mean([n for _, n in fits]))


def faiss_at_equal_inertia(x: torch.Tensor, K: int, args: argparse.Namespace,
                           target: float) -> tuple[float, float, str]:
    """The fastest faiss setting whose mean inertia is within 1 % of `target` (scikit-learn's): native
    k-means++ and AFK-MC² seeding, scikit-learn's greedy k-means++ (SKLEARN_SEEDINGS), and random
    seeding with nredo = 1, 2, 4, 8 (stopping at the first that reaches it). Prints every setting tried. Returns (seconds, inertia, setting); when none
    reaches the target, the best-inertia setting, marked "(not equal)"."""
    tried = []
    settings = [("k-means++", 1), ("afk-mc2", 1), *((name, 1) for name in SKLEARN_SEEDINGS)]
    settings += [("random", n) for n in (1, 2, 4, 8)]
    for init, nredo in settings:
        t, inertia, iters = run_faiss(x, K, args, init, nredo)
        name = f"init={init} nredo={nredo}"
        ok = inertia <= target * 1.01
        print(f"  faiss-cpu loop {name:58s}: {t * 1e3:9.1f} ms   inertia {inertia:10.4f}   iters {iters:5.1f}"
              f"   inertia / sklearn {inertia / target:.4f}{'   (within 1 %)' if ok else ''}")
        tried.append((t, inertia, name, ok))
        if init == "random" and ok:
            break
    equal = [r for r in tried if r[3]]
    if equal:
        t, inertia, name, _ = min(equal)
        return t, inertia, name
    t, inertia, name, _ = min(tried, key=lambda r: r[1])
    return t, inertia, name + " (not equal)"


def bench_case(name: str, x: torch.Tensor, K: int, args: argparse.Namespace,
               device: torch.device) -> dict[str, float] | None:
    """Times every method on one case; returns the RESULT ratios (None with --skip-*)."""
    P, N, D = x.shape
    print(f"\n== {name}: {P} problem(s) x {N} points, D={D}, K={K}, "
          f"iters<={args.iters}, n_init={args.n_init}")
    t_b, in_b, it_b = run_torch(x, K, args, device)
    print(f"  batched torch ({device.type}): {t_b * 1e3:9.1f} ms   inertia {in_b:10.4f}   iters {it_b}"
          f"   (algorithm=auto: {'gram' if device.type == 'cpu' and N <= D else 'explicit'})")
    if device.type == "cpu" and N <= D:  # the coordinates path, for reference (kmeans_gram docstring)
        t_e, in_e, it_e = run_torch(x, K, args, device, algorithm="explicit")
        print(f"  batched torch, explicit: {t_e * 1e3:6.1f} ms   inertia {in_e:10.4f}   iters {it_e}"
              f"   explicit/gram time {t_e / t_b:.2f}x")
    if args.skip_sklearn:
        return None
    t_s, in_s, it_s = run_sklearn(x, K, args)
    print(f"  sklearn loop (cpu)    : {t_s * 1e3:9.1f} ms   inertia {in_s:10.4f}   iters {it_s:.1f}"
          f"   sklearn/batched time {t_s / t_b:6.2f}x   inertia ratio {in_b / in_s:.4f}")
    if args.skip_faiss:
        return None
    t_f, in_f, setting = faiss_at_equal_inertia(x, K, args, in_s)
    print(f"  faiss at equal inertia: {setting}: {t_f * 1e3:.1f} ms, faiss/batched time {t_f / t_b:.2f}x")
    return {"vs_faiss": t_f / t_b, "vs_sklearn": t_s / t_b, "inertia_vs_sklearn": in_b / in_s}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="torch device for the batched k-means (cpu, cuda, ...)")
    p.add_argument("--odin-images", type=int, default=64)
    p.add_argument("--odin-points", type=int, default=196, help="points per image (14x14 grid)")
    p.add_argument("--odin-dim", type=int, default=256)
    p.add_argument("--odin-k", type=int, default=16)
    p.add_argument("--r2o-images", type=int, default=64)
    p.add_argument("--r2o-regions", type=int, default=100, help="regions per image, pooled over the batch")
    p.add_argument("--r2o-dim", type=int, default=1024)
    p.add_argument("--r2o-k", type=int, default=128)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--n-init", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spread", type=float, default=1.0, help="blob noise norm relative to the unit centres")
    p.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up; best is kept")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for all three methods (0: torch's default); 1 avoids OpenMP "
                   "oversubscription slowdowns on a loaded machine")
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--skip-faiss", action="store_true")
    p.add_argument("--cases", default="odin,r2o", help="comma-separated subset of {odin, r2o}")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, torch threads {torch.get_num_threads()}")
    cases = {c.strip() for c in args.cases.split(",")}
    unknown = cases - {"odin", "r2o"}
    if unknown:
        raise SystemExit(f"--cases: unknown case(s) {sorted(unknown)}; choose from odin, r2o")
    results: dict[str, dict | None] = {}
    if "odin" in cases:
        x = make_blobs(args.odin_images, args.odin_points, args.odin_dim, centers=args.odin_k,
                       spread=args.spread, seed=args.seed)
        results["odin"] = bench_case("odin per-image", x, args.odin_k, args, device)
    if "r2o" in cases:
        n = args.r2o_images * args.r2o_regions
        x = make_blobs(1, n, args.r2o_dim, centers=args.r2o_k, spread=args.spread,
                       seed=args.seed + 1)
        results["r2o"] = bench_case("r2o pooled", x, args.r2o_k, args, device)
    print()
    for case, r in results.items():
        if r is not None:
            print(f"RESULT case={case} vs_faiss={r['vs_faiss']:.2f} vs_sklearn={r['vs_sklearn']:.2f} "
                  f"inertia_vs_sklearn={r['inertia_vs_sklearn']:.4f}")


if __name__ == "__main__":
    main()
