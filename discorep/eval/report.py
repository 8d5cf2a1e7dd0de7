"""What every evaluation prints and writes: a table on stdout and a JSON with every number."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from discorep.errors import UsageError


def resolve_device(device: str) -> torch.device:
    """"auto" → cuda when available, else cpu; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
                         "use --device cpu, or auto to take a GPU when there is one")
    return torch.device(device)


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, (float, np.floating)) else str(value)


def print_table(title: str, rows: list[dict], columns: Sequence[str]) -> str:
    """Print `rows` as an aligned table of `columns` (missing cells blank); returns the text."""
    cells = [[str(c) for c in columns]] + [[_fmt(r[c]) if c in r else "" for c in columns] for r in rows]
    widths = [max(len(line[j]) for line in cells) for j in range(len(columns))]
    lines = [title] + ["  " + "  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(2, "  " + "  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text)
    return text


def json_safe(obj):
    """Plain JSON types: NaN/inf → null (strict JSON has no NaN), numpy → python, paths → str."""
    if isinstance(obj, (np.generic, np.ndarray)):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Atomically write `payload` (creates parent folders) so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def emit_report(title: str, rows: list[tuple[str, object]], out: str | os.PathLike | None, payload: dict) -> None:
    """Print (name, value) rows as a two-column table and, when `out` is given, write the JSON."""
    print_table(title, [{"metric": name, "value": value} for name, value in rows], ("metric", "value"))
    if out is not None:
        write_json(out, payload)
