"""The table `transfer` prints: each headline metric for the checkpoint, the random baseline and their
difference (mean ± std over seeds when there are several)."""

from __future__ import annotations

from pathlib import Path

from discorep.eval.report import print_table

HEADLINE = {"bbox": ("AP", "AP50", "AP75"), "segm": ("AP", "AP50", "AP75")}


def _fmt(v) -> str:
    if isinstance(v, dict):
        if v.get("mean") is None:
            return "n/a"
        return f"{v['mean']:.1f} ± {v['std']:.1f}"
    return "n/a" if v is None else f"{float(v):.1f}"


def rows(result: dict) -> list[tuple[str, str, str, str]]:
    """(metric, checkpoint, baseline, difference) for the headline metrics."""
    base, diff = result.get("baseline") or {}, result.get("difference") or {}
    out = []
    if "mIoU" in result:
        out.append(("mIoU", _fmt(result["mIoU"]), _fmt(base.get("mIoU")), _signed(diff.get("mIoU"))))
    for kind, names in HEADLINE.items():
        for name in names if kind in result else ():
            out.append((f"{kind} {name}", _fmt(result[kind][name]), _fmt((base.get(kind) or {}).get(name)),
                        _signed((diff.get(kind) or {}).get(name))))
    return out


def _signed(v) -> str:
    return "n/a" if v is None else f"{v:+.1f}"


def print_result(result: dict, out: Path) -> None:
    s = result["settings"]
    base = result.get("baseline")
    title = (f"transfer {s['task']} ({s['preset']}, {s['seeds']} seed(s), {s['world_size']} process(es), "
             f"norm {s['config']['model']['norm']}, lr {s['lr']:.3g}): percent")
    columns = ("metric", s["checkpoint"] if len(s["checkpoint"]) < 40 else "checkpoint",
               base["checkpoint"] if base else "baseline", "difference")
    print_table(title, [dict(zip(columns, r)) for r in rows(result)], columns)  # the evals' table
    if base is None:
        print("no baseline (--baseline none): these numbers stand alone")
    print(f"wrote {out}")
