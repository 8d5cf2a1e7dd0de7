"""The one-way layers of docs/architecture.md: the import-linter contracts hold and no module imports
itself through others (imports inside functions count: grimp and import-linter see them too)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_import_linter_contracts_are_kept():
    # `lint-imports` as CI would run it (the console script may be missing from PATH; its function is not).
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _cycles(edges) == [["a", "b", "c"]]


def test_no_module_level_import_cycles():
    sys.path.insert(0, str(ROOT))  # the working tree's discorep, whatever is installed
    try:
        graph = grimp.build_graph("discorep", cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    edges = {m: {d for d in graph.find_modules_directly_imported_by(m) if d in graph.modules} for m in graph.modules}
    assert _cycles(edges) == []


def test_errors_and_fileio_are_torch_free_leaves_and_old_error_names_still_work():
    code = ("import sys, discorep.errors, discorep.fileio, discorep.cli\n"
            "assert 'torch' not in sys.modules, 'torch loaded'\n"
            "assert not [m for m in sys.modules if m.startswith('discorep.') and m.split('.')[1] not in "
            "('errors', 'fileio', 'cli', 'cli_eval', 'cli_transfer', 'cliargs', 'runs', 'eval')], sorted(sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    errors = importlib.import_module("discorep.errors")
    old_homes = {"data.images": ["BadImageError", "DatasetError"], "data.priors": ["PriorError"],
                 "discovery.align": ["AlignInputError", "LabelIdError"], "runs": ["CheckpointError"],
                 "checkpoint": ["CheckpointError"], "engine.configio": ["ConfigError"],
                 "engine.train": ["NonFiniteLossError", "PeerLostError", "ResumeConfigError"],
                 "engine.startup": ["RunFolderError", "TooManyBadImagesError"]}
    for module, names in old_homes.items():
        for name in names:
            assert getattr(importlib.import_module(f"discorep.{module}"), name) is getattr(errors, name)
            assert errors.is_user_error(getattr(errors, name).__new__(getattr(errors, name)))
    assert not errors.is_user_error(RuntimeError("a bug")) and not errors.is_user_error(KeyError("x"))
