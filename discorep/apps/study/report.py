"""The study's report: tables (mean ± std over seeds), the papers' orderings checked, ABO over training,
mask pictures over training, and the commands behind every number. Written from the per-run JSON only."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import torch

from discorep.eval.report import write_json
from discorep.apps.study.spec import StudySpec

# (column title, result section, key)
COLUMNS = [("ABO_i", "objects", "abo_i"), ("ABO_c", "objects", "abo_c"), ("OR", "objects", "or"),
           ("photos ABO_i", "photos", "abo_i"),
           ("FG mIoU", "foreground", "miou"), ("J&F", "video", "J&F"), ("k-NN top-1", "knn", "top1")]
# The dense evaluations' columns (spec.DENSE_TASKS): shown only when some row has them.
DENSE_COLUMNS = [("lin-seg mIoU", "linear_seg", "miou"), ("overcluster mIoU", "overcluster", "miou"),
                 ("NN-retrieval mIoU", "retrieval", "miou"), ("CorLoc", "corloc", "corloc")]


def values(results: list[dict], section: str, key: str) -> list[float]:
    return [float(r[section][key]) for r in results if section in r and r[section].get(key) is not None]


def mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def cell(xs: list[float], percent: bool = True) -> str:
    if not xs:
        return "–"
    m, s = mean_std(xs)
    scale = 100 if percent else 1
    return f"{m * scale:.1f} ± {s * scale:.1f}" if len(xs) > 1 else f"{m * scale:.1f}"


def _minutes(results: list[dict]) -> str:
    secs = [r["train_seconds"] for r in results if "train_seconds" in r]
    return f"{np.mean(secs) / 60:.1f}" if secs else "–"


def table(title: str, rows: list[tuple[str, list[dict]]], time_column: bool = True) -> str:
    columns = COLUMNS + [c for c in DENSE_COLUMNS if any(values(results, c[1], c[2]) for _, results in rows)]
    head = ["method", "n"] + [c[0] for c in columns] + (["train min / run"] if time_column else [])
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, results in rows:
        cells = [label, str(len(results))] + [cell(values(results, sec, key)) for _, sec, key in columns]
        lines.append("| " + " | ".join(cells + ([_minutes(results)] if time_column else [])) + " |")
    return "\n".join(lines) + "\n"


def _baseline_rows(spec: StudySpec, baselines: dict[str, list[dict]]) -> list[tuple[str, list[dict]]]:
    rows = []
    if "random" in baselines:
        rows.append((f"random:{spec.arch} (no training)", baselines["random"]))
    if "slic" in baselines:
        slic = baselines["slic"][0]
        segs = ",".join(map(str, spec.eval.slic_segments))
        rows.append((f"SLIC regions, n = {segs} (no network)", [slic]))
        rows.append(("SLIC prior, 100 regions (R2O's prior)", [{"objects": slic["objects_prior100"]}]))
        if "grid_oracle" in slic:
            oracle = slic["grid_oracle"]
            rows.append((f"ceiling: ground truth rounded to the {oracle['cells']}x{oracle['cells']} feature grid",
                         [{k: oracle[k] for k in ("objects", "photos") if k in oracle}]))
    return rows


def _label(spec: StudySpec, name: str) -> str:
    run = next(r for r in spec.runs if r.name == name)
    return run.label or run.name


def orderings(spec: StudySpec, results: dict[str, list[dict]], baselines: dict[str, list[dict]]) -> list[str]:
    """The papers' claims, each checked on the means with the seeds' spread shown."""
    def m(name: str, section: str = "objects", key: str = "abo_i") -> list[float]:
        if name == "slic_prior100":
            return [r["objects_prior100"]["abo_i"] for r in baselines.get("slic", [])]
        source = baselines.get(name) or results.get(name) or []
        return values(source, section, key)

    claims: list[tuple[str, str, str, str, str]] = []  # (claim, a, b, section, key)
    trained = [r.name for r in spec.runs if "main" in r.tables]
    for name in trained:
        claims.append((f"{_label(spec, name)} masks beat random:{spec.arch} (ABO_i, held-out scenes)", name, "random",
                       "objects", "abo_i"))
        claims.append((f"{_label(spec, name)} masks beat random:{spec.arch} on the photo composites (ABO_i)", name,
                       "random", "photos", "abo_i"))
        claims.append((f"{_label(spec, name)} masks beat the SLIC prior it starts from, 100 regions (ABO_i)", name,
                       "slic_prior100", "objects", "abo_i"))
        claims.append(((f"{_label(spec, name)} masks beat SLIC at the same proposal budget (ABO_i; a stronger "
                       "baseline than the papers use)"), name, "slic", "objects", "abo_i"))
    for name in (n for n in trained if n != "byol"):
        for col, sec, key in (("ABO_i", "objects", "abo_i"), ("FG mIoU", "foreground", "miou"),
                              ("J&F", "video", "J&F")):
            claims.append((f"{_label(spec, name)} beats BYOL on {col}", name, "byol", sec, key))
    for other in ("r2o_fixed16", "r2o_fixed64", "r2o_4to128"):
        claims.append((f"R2O curriculum 128→4 beats {_label(spec, other) if other in results else other} (ABO_i)",
                       "r2o", other, "objects", "abo_i"))
    lines = []
    for text, a, b, sec, key in claims:
        xa, xb = m(a, sec, key), m(b, sec, key)
        if not xa or not xb:
            continue
        (ma, sa), (mb, sb) = mean_std(xa), mean_std(xb)
        verdict = "holds" if ma > mb else "**does not hold**"
        margin = "" if ma <= mb or (ma - sa) > (mb + sb) else " (within one std: not resolved by these seeds)"
        lines.append(f"- {text}: {verdict}{margin} — {100 * ma:.1f} ± {100 * sa:.1f} vs {100 * mb:.1f} ± {100 * sb:.1f}")
    return lines


def abo_plot(spec: StudySpec, results: dict[str, list[dict]], baselines: dict[str, list[dict]], target: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    drawn = False
    for run in spec.runs:
        curves = [r["probe"] for r in results.get(run.name, []) if r.get("probe")]
        if not curves or "main" not in run.tables:
            continue
        epochs = sorted({p["epoch"] for c in curves for p in c})
        means = [np.mean([p["abo_i"] for c in curves for p in c if p["epoch"] == e]) * 100 for e in epochs]
        ax.plot(epochs, means, marker="o", ms=3, label=run.label or run.name)
        drawn = True
    for name, style in (("random", ":"), ("slic", "--")):
        xs = values(baselines.get(name, []), "objects", "abo_i")
        if xs:
            label = {"random": f"random:{spec.arch}", "slic": f"SLIC n = {spec.eval.slic_segments}"}[name]
            ax.axhline(np.mean(xs) * 100, ls=style, c="grey", label=f"{label} (all held-out scenes)")
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"ABO_i (%) on {spec.eval.probe_images} held-out scenes")
    ax.set_title("Object discovery during training (R2O Fig. 4 analogue)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
    return True


def mask_pictures(spec: StudySpec, results: dict[str, list[dict]], assets: Path, rel: str) -> list[str]:
    """First, middle and last epoch's mask grid of seed 0 of R2O, the hybrid and Odin (R2O Fig. 5 analogue;
    DetCon's masks are its fixed prior, they do not evolve). Stored as 256-colour PNGs to keep docs small."""
    from PIL import Image

    lines = []
    for name in ("r2o", "hybrid", "odin"):
        runs = results.get(name) or []
        if not runs:
            continue
        pictures = sorted((Path(runs[0]["run_dir"]) / "masks").glob("epoch_*.png"))
        if not pictures:
            continue
        chosen = [pictures[0], pictures[len(pictures) // 2], pictures[-1]] if len(pictures) > 2 else pictures
        lines.append(f"**{_label(spec, name)}** (seed {runs[0]['seed']}): " +
                     ", ".join(p.stem.replace("_", " ") for p in chosen))
        lines.append("")
        for p in chosen:
            dest = assets / f"masks_{name}_{p.stem}.png"
            with Image.open(p) as picture:
                picture.convert("RGB").quantize(256).save(dest, optimize=True)
            lines.append(f"![{name} {p.stem}]({rel}/{dest.name})")
        lines.append("")
    return lines


def _setup(spec: StudySpec, results: dict[str, list[dict]], data: dict[str, Path]) -> list[str]:
    first = next((r for rs in results.values() for r in rs), None)
    budget = ", ".join(f"`{k}={v}`" for k, v in spec.budget.items()) or "(the run configs' own)"
    e = spec.eval
    lines = [f"- Budget shared by every run: {budget}; seeds {spec.seeds}.",
             (f"- Training images: `{data['train_images']}`. Evaluation: objects and foreground on "
              f"`{data['val_coco']}`, video on `{data['videos']}`, k-NN `{data['knn_train']}` → `{data['knn_val']}`, "
              f"\"photos\" = objects on `{data['photo_coco']}`. With the demo data these are the generated training "
              "scenes, the held-out scenes (another seed), the generated videos, the scenes labelled by their largest "
              "object, and real coin cut-outs on real photos that no training scene uses (docs/data.md)."),
             (f"- Objects: whole image at {e.size}×{e.size}, {e.features} features, K = {e.objects_ks} "
             f"(proposals = all their segments); foreground: K = {e.foreground_k}, Hungarian; video: short side "
             f"{e.video_size}, {e.video_features}; k-NN: {e.knn_size} px, {e.knn_features}, k = {e.knn_k}. Columns "
             "are percentages, mean ± sample std over seeds (n = number of seeds; baselines without a seed: one value)."),
             "- Runs: " + "; ".join(f"`{r.name}` = `{r.config}`" + (f" + `{' '.join(f'{k}={v}' for k, v in r.overrides.items())}`"
                                                              if r.overrides else "") for r in spec.runs) + "."]
    if first is not None:
        lines.append(f"- Example checkpoint: `{first['checkpoint']}`.")
    return lines


def _commands(spec: StudySpec, data: dict[str, Path]) -> list[str]:
    e = spec.eval
    ks = ",".join(map(str, e.objects_ks))
    return ["```",
            (f"discorep eval objects --checkpoint CKPT --coco {data['val_coco']} --images {data['val_images']} "
            f"--size {e.size} --features {e.features} --k {ks} --seed SEED"),
            (f"discorep eval objects --checkpoint CKPT --coco {data['photo_coco']} --images {data['photo_images']} "
            f"--size {e.size} --features {e.features} --k {ks} --seed SEED   # photos column"),
            (f"discorep eval foreground --checkpoint CKPT --coco {data['val_coco']} --images {data['val_images']} "
            f"--size {e.size} --features {e.features} --k {e.foreground_k} --seed SEED"),
            (f"discorep eval video --checkpoint CKPT --davis {data['videos']} --size {e.video_size} "
            f"--features {e.video_features}"),
            (f"discorep eval knn --checkpoint CKPT --train {data['knn_train']} --val {data['knn_val']} "
            f"--size {e.knn_size} --features {e.knn_features} --k {e.knn_k}"),
            "```",
            (f"CKPT is a run's last checkpoint (`{spec.out_dir}/runs/<run>/seed<k>/checkpoints/`) or "
            f"`random:{spec.arch}`; the SLIC rows come from `discorep.apps.study.baselines` (no CLI of their own).")]


def write_report(spec: StudySpec, results: dict[str, list[dict]], baselines: dict[str, list[dict]],
                 data: dict[str, Path], *, command: str, elapsed: float, missing: list[str] | None = None) -> Path:
    report, assets = Path(spec.report), Path(spec.assets)
    assets.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(assets, report.parent)).as_posix()  # links work wherever the report lives
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, " + (
        torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
    parts = [f"# Results: {spec.name}", "",
             (f"Produced by `{command}` on {machine} ({when}). Every number is what "
             "that run measured; the per-run JSON files are in "
             f"`{spec.out_dir}/per_run/`. This file is rewritten by the command; the discussion at the end is "
             "kept in a separate hand-written file."), "", "## Setup", "", *_setup(spec, results, data), ""]
    train_s = sum(r.get("train_seconds", 0) for rs in results.values() for r in rs)
    eval_s = sum(r.get("eval_seconds", 0) for rs in results.values() for r in rs)
    parts += [(f"Compute recorded in the per-run files: {train_s / 60:.1f} min of pretraining and {eval_s / 60:.1f} min "
              f"of evaluation over {sum(len(rs) for rs in results.values())} runs (this invocation itself: "
              f"{elapsed / 60:.1f} min, less when earlier results were reused)."), ""]
    if missing:
        parts += [(f"**Incomplete:** {len(missing)} (run, seed) pairs had not finished when this report was written "
                  f"(`--report-only`): {', '.join(missing)}. Their rows average fewer seeds."), ""]
    parts.append("## Tables\n")
    for table_id, title in spec.tables.items():
        rows = _baseline_rows(spec, baselines) if table_id == "main" else []
        rows += [(r.label or r.name, results.get(r.name, [])) for r in spec.runs if table_id in r.tables]
        parts.append(table(title, rows))
    parts += ["## The papers' orderings, measured", "", *orderings(spec, results, baselines), ""]
    if abo_plot(spec, results, baselines, assets / "abo_over_training.png"):
        parts += ["## ABO over training", "", f"![ABO over training]({rel}/abo_over_training.png)", ""]
    pictures = mask_pictures(spec, results, assets, rel)
    if pictures:
        parts += ["## Masks over training (R2O Fig. 5 analogue)", "",
                  "The engine's per-epoch mask pictures (fixed training images; k-means at the run's current K).",
                  "", *pictures]
    parts += ["## How each number was produced", "", *_commands(spec, data), ""]
    discussion = Path(spec.discussion) if spec.discussion else None
    if discussion is not None and discussion.is_file():
        parts += ["## Discussion", "", discussion.read_text().strip(), ""]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(parts))
    write_json(assets / "summary.json", {"study": spec.name, "command": command, "elapsed_seconds": elapsed,
                                         "results": results, "baselines": baselines})
    return report


def load_results(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
