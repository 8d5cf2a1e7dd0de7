"""A folder nothing can be written into, even as root (where chmod does not stop writes)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only_folder(path: Path):
    """`path` created and made unwritable: `chattr +i` as root, mode 0555 otherwise; skips if neither holds."""
    path.mkdir(parents=True, exist_ok=True)
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    if not immutable:
        path.chmod(0o555)
    try:
        try:
            (path / ".probe").write_text("x")
            (path / ".probe").unlink()
            pytest.skip("cannot make a read-only folder here (no chattr as root, chmod ignored)")
        except OSError:
            pass
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        else:
            path.chmod(0o755)
