"""discorep/omp.py: the OpenMP wait policy is chosen before torch loads, and a user's choice wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(code: str, **env_changes: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


REPORT = ("import json, os, sys; print(json.dumps({'returned': r, 'env': os.environ.get('OMP_WAIT_POLICY'), "
          "'torch': 'torch' in sys.modules}))")


def test_passive_when_unset_and_torch_not_loaded():
    got = _child("from discorep.omp import prefer_passive_waits; r = prefer_passive_waits(); " + REPORT)
    assert got == {"returned": "PASSIVE", "env": "PASSIVE", "torch": False}


def test_the_users_policy_wins():
    got = _child("from discorep.omp import prefer_passive_waits; r = prefer_passive_waits(); " + REPORT,
                 OMP_WAIT_POLICY="ACTIVE")
    assert got == {"returned": "ACTIVE", "env": "ACTIVE", "torch": False}


def test_too_late_once_torch_is_loaded():
    got = _child("import torch; from discorep.omp import prefer_passive_waits; r = prefer_passive_waits(); "
                 + REPORT)
    assert got == {"returned": None, "env": None, "torch": True}


def test_discover_command_sets_it_before_torch_loads(tmp_path):
    """The policy is in place by the time the command's checks run, and they still run without torch
    (a bad --images is one line within a second)."""
    code = ("import sys; from discorep import cli\n"
            f"r = cli.main(['discover', '--checkpoint', 'random:resnet18', '--images', {str(tmp_path / 'missing')!r},"
            f" '--out', {str(tmp_path / 'out')!r}])\n" + REPORT)
    got = _child(code)
    assert got["returned"] != 0 and got["env"] == "PASSIVE" and got["torch"] is False
