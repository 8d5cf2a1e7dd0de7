"""Where one step of `make demo` goes: the demo's own config, timed and profiled on this CPU.

    python benchmarks/demo_step.py --threads 2
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/demo_step.py --threads 2          # an AVX2-only CPU, emulated

Loads configs/r2o_contrastive_cpu_demo.yaml (or --config) on generated scenes, builds the region-prior
cache (SLIC: once per image in the demo, timed per image), loads batches in-process (data per batch),
then times training steps with `benchmarks/step_time.time_steps` (forward + backward + optimizer +
EMA, median over --steps) and profiles one more: the target's forward on the raw view
(discovery_forward), k-means, mask alignment, pooling + heads and the loss are its discorep/ scopes;
"backbone forward" is the rest of the forward (online encoder on both views, target on both views).
--flops counts one step's FLOPs and prints the rate the encoders' phases reached: against the CPU's
peak (cores x FMA lanes x 2 x clock) it says how much a faster kernel could still give.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.step_time import build_timed_method, time_data, time_steps
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine import builders
from discorep.engine.config import Config
from discorep.engine.configio import load_config
from discorep.engine.distributed import DistInfo
from discorep.methods import build_method
from discorep.methods.base import StepInfo

ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
SCOPES = ("discovery_forward", "kmeans", "align", "pool_heads", "loss")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/r2o_contrastive_cpu_demo.yaml")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after --warmup), median kept")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--image-size", type=int, default=192, help="side of the generated scenes (the demo's)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--hotspots", type=int, default=0, metavar="N", help="also list the N costliest ops")
    p.add_argument("--flops", action="store_true",
                   help="also count one step's FLOPs (forward + backward, torch's FlopCounterMode) and print "
                        "the convolutions' achieved GFLOP/s: how close the step is to the CPU's FMA peak")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("overrides", nargs="*", help="config overrides (key=value), as for discorep pretrain")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    dist = DistInfo(0, 1, 0, device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        probe = load_config(Config, args.config, args.overrides)
        n_batches = args.steps + args.warmup + 1  # + the profiled step
        make_scenes(tmp / "scenes", probe.train.batch_size * n_batches, seed=0,
                    image_size=(args.image_size, args.image_size))
        cfg = load_config(Config, args.config, [*args.overrides, f"data.root={tmp / 'scenes' / 'images'}",
                                                f"data.prior_cache={tmp / 'cache'}", "data.num_workers=0",
                                                "train.progress=false", "train.device=cpu"])
        tic = time.perf_counter()
        dataset = builders.build_dataset(cfg, dist)  # builds the region-prior cache (SLIC) once
        slic_ms = (time.perf_counter() - tic) * 1e3 / len(dataset)
        batches, data_s = time_data(cfg, dist, n_batches)
        r = time_steps(cfg, batches, device, args.warmup, args.hotspots)
        flops = count_step_flops(cfg, batches[0], device) if args.flops else None
    phases = {k: round(r["phases_ms"].get(k, 0.0), 1) for k in SCOPES}
    profiled_fwd = r["profiled_step_ms"] - r["phases_ms"].get("backward_optimizer", 0.0)
    result = {
        "environment": {"command": shlex.join(["python", "benchmarks/demo_step.py",
                                               *(sys.argv[1:] if argv is None else argv)]),
                        "torch": torch.__version__, "threads": torch.get_num_threads(),
                        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        **{v: os.environ.get(v) for v in ISA_VARIABLES}},
        "config": args.config, "batch": cfg.train.batch_size, "view_size": cfg.views.size,
        "ms_per_step": r["ms_per_step"], "forward_ms": r["forward_ms"],
        "backward_optimizer_ms": r["backward_optimizer_ms"], "steps_ms": r["steps_ms"],
        "profiled_step": {"ms": r["profiled_step_ms"], **phases,
                          "backbone_forward": round(profiled_fwd - sum(phases.values()), 1),
                          "backward_optimizer": round(r["phases_ms"].get("backward_optimizer", 0.0), 1)},
        "data_ms_per_batch_in_process": data_s * 1e3, "slic_prior_ms_per_image": slic_ms,
    }
    if args.hotspots:
        result["hotspots"] = r["hotspots"]
    if flops is not None:
        conv_ms = result["profiled_step"]["backbone_forward"] + result["profiled_step"]["discovery_forward"] + \
            result["profiled_step"]["backward_optimizer"]
        result["gflop_per_step"] = {k: v / 1e9 for k, v in flops.items()}
        # The encoders' forward + backward are nearly all of the FLOPs and of those phases' time.
        result["encoder_gflop_per_s"] = flops["convolution"] / 1e9 / (conv_ms / 1e3)
    report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def count_step_flops(cfg: Config, batch: dict, device: torch.device) -> dict[str, float]:
    """FLOPs of one training step's forward + backward (torch's FlopCounterMode, 2 per multiply-add),
    split into convolutions (their backward included) and the rest (matmuls of the heads, k-means)."""
    from torch.utils.flop_counter import FlopCounterMode

    method = build_timed_method(cfg, device)
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = method(builders.to_device(batch, device), StepInfo(step=0, epoch=0.0,
                                                                      total_epochs=cfg.train.epochs, seed=0))
        loss.backward()
    per_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    conv = sum(n for op, n in per_op.items() if "convolution" in op)
    return {"total": float(sum(per_op.values())), "convolution": float(conv)}


def report(r: dict) -> None:
    env = r["environment"]
    print(f"{env['command']}  (torch {env['torch']}, {env['threads']} threads, capability "
          f"{env['cpu_capability']}, " + ", ".join(f"{v}={env[v]}" for v in ISA_VARIABLES) + ")")
    print(f"{r['config']}: batch {r['batch']}, {r['view_size']}-px views")
    print(f"  step (median of {len(r['steps_ms'])}): {r['ms_per_step']:.0f} ms = forward {r['forward_ms']:.0f} "
          f"+ backward/optimizer/EMA {r['backward_optimizer_ms']:.0f}  ({r['batch'] / r['ms_per_step'] * 1e3:.1f} images/s)")
    print("  profiled step (ms): " + ", ".join(f"{k} {v}" for k, v in r["profiled_step"].items()))
    print(f"  data, in process: {r['data_ms_per_batch_in_process']:.0f} ms per batch; "
          f"SLIC prior (cache build): {r['slic_prior_ms_per_image']:.1f} ms per image, once")
    if "gflop_per_step" in r:
        g = r["gflop_per_step"]
        print(f"  FLOPs per step: {g['total']:.1f} GFLOP ({g['convolution']:.1f} in convolutions); the encoders' "
              f"forward + backward phases ran at {r['encoder_gflop_per_s']:.0f} GFLOP/s")
    for h in r.get("hotspots", []):
        print(f"    {h}")


if __name__ == "__main__":
    main()
