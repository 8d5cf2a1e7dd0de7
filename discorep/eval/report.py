"""What every evaluation prints and writes: a table on stdout and a JSON with every number."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch


def resolve_device(device: str) -> torch.device:
    """"auto" → cuda when available, else cpu; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    """A two-column table (name, value)."""
    width = max((len(name) for name, _ in rows), default=0)
    print(title)
    for name, value in rows:
        print(f"  {name:<{width}}  {_fmt(value)}")


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Atomically write `payload` (NaN/inf as strings, paths as strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_json_safe(payload), indent=2) + "\n")
    tmp.replace(path)
    return path


def emit_report(title: str, rows: list[tuple[str, object]], out: str | os.PathLike | None, payload: dict) -> None:
    """Print the table and, when `out` is given, write the JSON."""
    print_table(title, rows)
    if out is not None:
        write_json(out, payload)
