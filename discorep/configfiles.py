"""Find a `--config`: a path as given, else the config of that name bundled with the package.

The repository's `configs/` folder ships inside the package (`discorep/configs`, package data), so
`--config r2o_cpu_demo.yaml` (or the README's `configs/r2o_cpu_demo.yaml`) works from any directory.
A path that exists always wins, so a user's own copy is never shadowed. No torch import here.
"""

from __future__ import annotations

from pathlib import Path

from discorep.errors import UsageError

BUNDLED = Path(__file__).resolve().parent / "configs"


def bundled_names() -> list[str]:
    return sorted(p.name for p in BUNDLED.glob("*.yaml")) if BUNDLED.is_dir() else []


def find_config(name: str | Path) -> Path:
    """The file `--config name` means; a UsageError listing the bundled configs if there is none."""
    path = Path(name)
    if path.is_file():
        return path
    candidates = [path.name, f"{path.name}.yaml"] if path.suffix != ".yaml" else [path.name]
    # Only a bare name or the README's `configs/<name>` falls back: any other missing path is a typo to report.
    if len(path.parts) == 1 or path.parent == Path("configs"):
        for candidate in candidates:
            if (BUNDLED / candidate).is_file():
                return BUNDLED / candidate
    if path.is_dir():
        raise UsageError(f"--config {name}: is a folder; pass a YAML file")
    raise UsageError(f"--config {name}: no such file, and no bundled config of that name; "
                     f"bundled: {', '.join(bundled_names()) or 'none (package installed without data)'}")
