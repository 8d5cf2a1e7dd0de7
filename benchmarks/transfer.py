"""Seconds per iteration of `discorep transfer detect|segment`'s fine-tuning loop against torchvision's
model stepped bare on the same batches, measured in one run.

    python benchmarks/transfer.py --threads 2             # resnet18, 160 px, batch 2, the cpu presets, CPU
    python benchmarks/transfer.py --threads 2 --norm frozen   # detectron2's default heads: cheaper on a CPU
    python benchmarks/transfer.py --arch resnet50 --size 800 --batch 2 --iters 20 --warmup 3 --device cuda

Cost on 2 cores: 2 x (--warmup + --iters) iterations per task. Detection dominates: the cpu preset's norm
bn gives Mask R-CNN torchvision's v2 heads, 4 convs on each of the 512 RoIs sampled per image, seconds
per iteration at any image size (--norm frozen: the 2-fc box head, a few times cheaper).

discorep: `discorep.transfer.loop.Fitter.fit` with the task's `loss_fn`, i.e. per iteration what
`transfer detect|segment` runs: the lr set in every param group, the loss, the loss all-reduce helper
(the terms packed and read back to the host; the non-finite stop), zero_grad, backward, gradient clipping
(the preset's solver.clip_grad: 10 in the cpu presets) and the SGD step (progress bar on a terminal).
bare: a copy of the same network from the same initial weights, the same SGD param groups, in a plain
loop: `sum(model(images, targets).values())` (Mask R-CNN) or cross-entropy of `model(images)` (the FCN
segmenter, ignore label as in `segment.loss_fn`), then zero_grad, backward, the same gradient clipping
when the preset sets one (part of the protocol's step, not of the loop's overhead), step.

Both loops take the SAME batches, drawn once from the task's own DataLoader (`train_loader`, its
augmentations included) and moved to the device before any timing, so neither the data loader nor the
host-to-device copy is in either measurement: Fitter.fit is handed an iterator over that list, yielding
(batch, dropped) pairs as `loop.endless_batches` does. After a block's last batch that iterator raises,
which ends fit before it reaches solver.iters, so no checkpoint is written inside the timing (a run writes
one every solver.checkpoint_every iterations, not per iteration).

Timing: --warmup iterations of each loop, then --repeats blocks that split --iters; in each block both
loops run the same batches, in alternating order (drift of a shared machine reaches both). A block's time
runs from its first batch to the end of its last iteration (synchronised on CUDA) and is divided by its
iterations; s/it is the median over blocks. Ratio: bare s/it / discorep s/it (1.0: the loop adds
nothing; the target is >= 0.95). The backbones are random (`random:<arch>`): weights do not change the
cost. Nothing is asserted: the numbers are what this machine measured.

Gradient clipping (the cpu presets' solver.clip_grad 10) costs ~10 ms for the FCN's 12.9M trained
parameters on 2 cores (4-5 % of a 160-px segmentation iteration): both loops clip, so it is not counted
as overhead. KEY=VALUE overrides go to the preset, e.g. `solver.clip_grad=0`.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.step_time import _device_name, _sync  # noqa: E402
from discorep.apps.demodata.scenes import make_scenes  # noqa: E402
from discorep.engine.distributed import DistInfo  # noqa: E402
from discorep.transfer import detect, load_backbone, load_transfer_config, segment  # noqa: E402
from discorep.transfer.data import IGNORE  # noqa: E402
from discorep.transfer.loop import Fitter, endless_batches  # noqa: E402
from discorep.transfer.models import check_norm_device  # noqa: E402
from discorep.transfer.run import _optimizer  # noqa: E402  (the optimizer `transfer` builds)

TASKS = {"detect": detect, "segment": segment}
TARGET = 0.95


# ------------------------------------------------------------------------------------------ set-up
def transfer_config(task: str, preset: str, size: int, batch: int, iters: int, device: str,
                    overrides: list[str] = ()):
    """The preset for `task` at `size` px (detection: shorter side; segmentation: crop), `batch` images,
    `iters` iterations, loading in-process, no checkpoint before the end."""
    sizes = [f"input.train_sizes=[{size}]", f"input.test_size={size}", f"input.max_size={2 * size}",
             f"input.crop_size={size}"]
    solver = [f"solver.batch_size={batch}", f"solver.iters={iters}", "solver.workers=0",
              f"solver.checkpoint_every={iters}", f"device={device}"]
    return load_transfer_config(task, preset, [*sizes, *solver, *overrides])


def make_train_set(task: str, cfg, root: Path, n_images: int, image_size: int):
    """`n_images` demo scenes in `root`, opened as the task opens its training set."""
    ann = make_scenes(root, n_images, seed=0, image_size=(image_size, image_size))
    train_set, _ = TASKS[task].open_sets(str(ann), str(ann), None, None, cfg)
    return train_set


def build(task: str, cfg, arch: str, num_classes: int, device: torch.device):
    """(model in train mode on `device`, its SGD) as `transfer` builds them, on a random `arch` backbone."""
    torch.manual_seed(0)
    model = TASKS[task].build_model(cfg, load_backbone(f"random:{arch}"), num_classes).to(device).train()
    return model, _optimizer(model, cfg)


def to_device(task: str, batch, device: torch.device):
    if task == "detect":
        images, targets = batch
        return ([im.to(device) for im in images],
                [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets])
    images, labels = batch
    return images.to(device), labels.to(device)


def preload(task: str, cfg, train_set, device: torch.device, n: int) -> list:
    """`n` batches from the task's DataLoader (seed 0, one process), on `device`."""
    loader = TASKS[task].train_loader(train_set, cfg, DistInfo(0, 1, 0, device), seed=0, start=0)
    return [to_device(task, b, device) for b, _ in itertools.islice(endless_batches(loader), n)]


# ------------------------------------------------------------------------------------------ timing
class _BlockEnd(Exception):
    """Raised by the batch iterator after a block's last batch: ends Fitter.fit without its final save."""


def time_discorep(fitter: Fitter, model, opt, loss_fn, batches: list, device: torch.device, start: int) -> float:
    """Seconds per iteration of Fitter.fit over `batches` (its iterations numbered from `start`)."""
    marks: list[float] = []

    def feed():
        _sync(device)
        marks.append(time.perf_counter())
        for b in batches:
            yield b, 0
        _sync(device)  # the last iteration's step is queued before fit asks for the next batch
        marks.append(time.perf_counter())
        raise _BlockEnd

    try:
        fitter.fit(model, opt, feed(), loss_fn, start, desc="discorep loop")
    except _BlockEnd:
        return (marks[1] - marks[0]) / len(batches)
    raise RuntimeError("Fitter.fit stopped before the block's batches ran out: raise solver.iters")


def bare_step(task: str):
    """loss(model, batch) of the plain loop: torchvision's loss dict summed, or pixel cross-entropy."""
    if task == "detect":
        return lambda model, batch: sum(model(*batch).values())
    return lambda model, batch: F.cross_entropy(model(batch[0]), batch[1], ignore_index=IGNORE)


def time_bare(step, model, opt, batches: list, device: torch.device, clip: float = 0.0) -> float:
    """Seconds per iteration of forward, loss, zero_grad, backward, (the preset's gradient clipping: part
    of the protocol's step, not of discorep's overhead), step over `batches`."""
    params = [p for p in model.parameters() if p.requires_grad]
    _sync(device)
    tic = time.perf_counter()
    for batch in batches:
        loss = step(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
    _sync(device)
    return (time.perf_counter() - tic) / len(batches)


def blocks(n: int, parts: int) -> list[tuple[int, int]]:
    """`n` iterations split into `parts` consecutive (start, end) blocks as even as can be."""
    parts = max(1, min(parts, n))
    cuts = [round(i * n / parts) for i in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def compare(task: str, args, root: Path, device: torch.device) -> dict:
    """discorep's loop and the bare loop on the same pre-loaded batches: s/it of each and their ratio."""
    total = args.warmup + args.iters
    # + 1: fit's loop runs while it < solver.iters, so the iterator, not the end, stops every block
    cfg = transfer_config(task, args.preset, args.size, args.batch, total + 1, str(device.type),
                          [*([f"model.norm={args.norm}"] if args.norm else []), *args.overrides])
    check_norm_device(cfg.model.norm, device)
    train_set = make_train_set(task, cfg, root / task, args.batch * total, args.size)
    batches = preload(task, cfg, train_set, device, total)
    ours, ours_opt = build(task, cfg, args.arch, train_set.num_classes, device)
    bare = copy.deepcopy(ours)
    bare_opt = _optimizer(bare, cfg)
    fitter = Fitter(cfg, root / f"{task}-run", DistInfo(0, 1, 0, device), {"backbone": f"random:{args.arch}"})
    loss_fn, step = TASKS[task].loss_fn(device), bare_step(task)

    def run_ours(a: int, b: int) -> float:
        return time_discorep(fitter, ours, ours_opt, loss_fn, batches[a:b], device, start=a)

    def run_bare(a: int, b: int) -> float:
        return time_bare(step, bare, bare_opt, batches[a:b], device, cfg.solver.clip_grad)

    if args.warmup:
        run_ours(0, args.warmup)
        run_bare(0, args.warmup)
    times: dict[str, list[float]] = {"discorep": [], "bare": []}
    for r, (a, b) in enumerate(blocks(args.iters, args.repeats)):
        a, b = a + args.warmup, b + args.warmup
        order = (("discorep", run_ours), ("bare", run_bare))
        for name, fn in order if r % 2 == 0 else order[::-1]:
            times[name].append(fn(a, b))
    s_ours, s_bare = statistics.median(times["discorep"]), statistics.median(times["bare"])
    ratio = s_bare / s_ours
    return {"discorep_s_per_iter": s_ours, "bare_s_per_iter": s_bare, "ratio": ratio,
            "meets_target": bool(ratio >= TARGET), "blocks_s_per_iter": times, "norm": cfg.model.norm,
            "clip_grad": cfg.solver.clip_grad, "model": "Mask R-CNN" if task == "detect" and cfg.model.masks
            else "Faster R-CNN" if task == "detect" else f"{cfg.model.head} segmenter"}


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="detect,segment", help="comma-separated: detect, segment")
    p.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet50"))
    p.add_argument("--size", type=int, default=160,
                   help="px: the scenes' side, detection's shorter side (train_sizes) and segmentation's crop")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=10, help="timed iterations per loop and task (after --warmup)")
    p.add_argument("--repeats", type=int, default=5, help="blocks the timed iterations are split into")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per loop and task first (GPU: 3)")
    p.add_argument("--preset", default="cpu", help="transfer preset (cpu: cpu_detect / cpu_segment)")
    p.add_argument("--norm", choices=("frozen", "bn", "syncbn"), default=None,
                   help="norm layers (default: the preset's, bn for cpu). frozen: detectron2's default, with "
                        "torchvision's 2-fc box head instead of bn's 4 convs on every sampled RoI (a few times "
                        "cheaper per detection iteration on a CPU)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="preset overrides for discorep's loop and the model, e.g. solver.clip_grad=0")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks or set(tasks) - set(TASKS) or args.iters < 1 or args.warmup < 0:
        raise SystemExit(f"--tasks from {', '.join(TASKS)}; --iters >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    env = {"device": _device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "command": shlex.join(["python", "benchmarks/transfer.py", *(sys.argv[1:] if argv is None else argv)])}
    with tempfile.TemporaryDirectory() as tmp:
        results = {task: compare(task, args, Path(tmp), device) for task in tasks}
    report(results, args, env)
    if args.out:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"settings": settings, "environment": env, "target": TARGET,
                                        "results": results}, indent=2))
    return results


def report(results: dict, args, env: dict) -> None:
    print(f"device={env['device']} torch={env['torch']} threads={env['threads']} arch={args.arch} "
          f"size={args.size} batch={args.batch} preset={args.preset}")
    print(f"command: {env['command']}")
    print(f"{args.iters} timed iterations per loop in {len(blocks(args.iters, args.repeats))} alternating blocks "
          f"after {args.warmup} warm-up; the same pre-loaded batches for both (no data loader in either)")
    print(f"{'task':8} {'model':>16} {'norm':>6} {'discorep s/it':>14} {'bare s/it':>10} {'bare/discorep':>14}  "
          f"target >= {TARGET}")
    for task, r in results.items():
        print(f"{task:8} {r['model']:>16} {r['norm']:>6} {r['discorep_s_per_iter']:14.3f} "
              f"{r['bare_s_per_iter']:10.3f} {r['ratio']:14.3f}  {'met' if r['meets_target'] else 'NOT met'}")


if __name__ == "__main__":
    main()
