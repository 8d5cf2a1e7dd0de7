"""How torch's idle OpenMP threads wait, chosen before torch loads (no torch import here).

By default GNU OpenMP (torch's CPU thread pool) keeps its threads spinning for a while after each parallel
region, so that the next one starts without a wake-up. That is right when the forward owns every core,
and wrong when other threads of the same process need the cores between regions: `discover` writes its
outputs on a background thread and computes superpixels on another while the forward runs, and a
spinning OpenMP thread takes the core the writer needs. With `OMP_WAIT_POLICY=PASSIVE` idle threads sleep
at once. Measured (docs/performance.md, "OpenMP wait policy"): `discover` at ResNet-18 without refinement
0.43 → 0.56 of the bare forward on a 2-core CPU, while a training step alone does not gain (it has no
such competition in-process), so only `discover` asks for it.

The runtime reads the variable once, when torch's library is loaded: setting it later changes nothing,
and a user's own setting always wins.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "OMP_WAIT_POLICY"


def prefer_passive_waits() -> str | None:
    """Ask OpenMP's idle threads to sleep (`OMP_WAIT_POLICY=PASSIVE`) unless the user chose a policy or
    torch is already loaded (too late to matter); returns the policy in effect (None: the runtime's
    default, because torch was loaded first)."""
    if WAIT_POLICY in os.environ:
        return os.environ[WAIT_POLICY]
    if "torch" in sys.modules:
        return None
    os.environ[WAIT_POLICY] = "PASSIVE"
    return "PASSIVE"
