"""Engine behaviour: exact resume, config refusal on resume, non-finite losses, skipped images."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.configio import save_config
from discorep.engine.train import Trainer, pretrain
from tests.helpers import final_state, losses_by_step, part, tiny_config


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 16, seed=1, image_size=(96, 96))
    return root / "images"


@pytest.fixture
def one_thread():
    """torch on 1 thread, as in a DataLoader worker: views made in the main process and in a worker then
    reach the same kernels, so comparing runs that differ in num_workers bit-exactly is deliberate
    (docs/testing.md, "Floats and exactness"; test_faults.py pins its subprocesses the same way)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", ["r2o", "odin_discrete"])
def test_resume_reproduces_losses_and_parameters_exactly(method, scenes, tmp_path, one_thread):
    full = pretrain(tiny_config(method, scenes, tmp_path / "a", {"train": {"max_steps": 10}}))
    half = tiny_config(method, scenes, tmp_path / "b", {"train": {"max_steps": 5}})
    pretrain(half)
    # Resume with a different number of data workers: the data stream must not depend on it.
    rest = tiny_config(method, scenes, tmp_path / "b", {"train": {"max_steps": 10}, "data": {"num_workers": 1}})
    resumed = pretrain(rest, resume="auto")
    a, b = losses_by_step(full), losses_by_step(resumed)
    assert [a[s] for s in range(6, 11)] == [b[s] for s in range(6, 11)]
    sa, sb = final_state(full), final_state(resumed)
    assert sa["step"] == sb["step"] == 10
    assert list(sa["method"]) == list(sb["method"])  # online, predictor, target (, discovery)
    for key, value in sa["method"].items():
        assert torch.equal(value, sb["method"][key]), f"{key} differs after resume"


def test_bf16_autocast_and_channels_last_train_with_finitelosses_by_step(scenes, tmp_path):
    cfg = tiny_config("odin", scenes, tmp_path, {"train": {"max_steps": 4, "precision": "bf16"},
                                                 "model": {"channels_last": True}})
    run_dir = pretrain(cfg)
    losses = losses_by_step(run_dir)
    assert len(losses) == 4 and all(isinstance(v, float) and v == v for v in losses.values())
    fp32 = losses_by_step(pretrain(tiny_config("odin", scenes, tmp_path / "fp32", {"train": {"max_steps": 4}})))
    assert losses[1] != fp32[1] and abs(losses[1] - fp32[1]) < 0.1 * abs(fp32[1])  # bf16 really ran, close


def test_a_skipped_step_on_the_copy_boundary_still_copies_theta_into_tau(scenes, monkeypatch, tmp_path):
    """Issue 23.3: 16 images, batch 4, discrete_every_epochs 1: step 4 copies θ into τ. Its loss is made
    infinite; the step is skipped (θ untouched), yet τ must equal θ after it, not wait a whole epoch."""
    copy_step = 4
    seen: dict = {}
    original = Trainer.train_step

    def train_step(self, batch):
        if self.step != copy_step - 1:
            return original(self, batch)
        seen["theta"] = {k: v.clone() for k, v in self.method.online.state_dict().items()}
        update = self.method.discovery.update
        self.method.discovery.update = lambda *a: seen.setdefault("copied", update(*a))
        layer = self.method.online.encoder.backbone.layer2
        hook = layer.register_forward_hook(lambda m, i, out: out * math.inf)
        try:
            return original(self, batch)
        finally:
            hook.remove()
            del self.method.discovery.update

    monkeypatch.setattr(Trainer, "train_step", train_step)
    cfg = tiny_config("odin_discrete", scenes, tmp_path, {"train": {"max_steps": copy_step, "nonfinite": "skip",
                                                                    "picture_images": 0}})
    run_dir = pretrain(cfg)
    assert math.isnan(float(losses_by_step(run_dir)[copy_step]))  # the step was skipped ...
    state = final_state(run_dir)
    assert state["step"] == copy_step and seen["copied"] is True
    online, tau = part(state, "online"), part(state, "discovery.net")
    assert set(online) == set(tau)
    for key, value in online.items():
        assert torch.equal(value, seen["theta"][key]), f"online.{key} changed on a skipped step"
        if value.is_floating_point():  # ... and the copy happened at its boundary (buffers too)
            assert torch.equal(tau[key], value), f"discovery.net.{key} != online.{key} after the copy step"


def _assert_same(a, b, where="checkpoint"):
    """Recursive equality of two loaded checkpoints: tensors bit-equal with their dtypes, everything else ==."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys differ"
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), f"{where} differs"
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} vs {b!r}"


def test_pictures_on_or_off_write_the_same_checkpoint_whole(scenes, tmp_path):
    """Issue 23.6 (and 12): drawing mask pictures changes nothing a checkpoint holds, RNG states included.
    Each run is its own `discorep pretrain` process, as a user runs them (Python's and numpy's RNGs start
    from OS entropy unless the run seeds them). Both do the same float work on this CPU with the same
    threads, so their weights are bit-equal too."""
    states = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for n in (8, 0):
        cfg = tiny_config("byol", scenes, tmp_path / "runs", {"train": {"name": f"pictures{n}", "max_steps": 3,
                                                                        "picture_images": n}})
        config = save_config(cfg, tmp_path / f"pictures{n}.yaml")
        subprocess.run([sys.executable, "-m", "discorep.cli", "pretrain", "--config", str(config)], env=env,
                       check=True, capture_output=True, timeout=300)
        run_dir = tmp_path / "runs" / f"pictures{n}"
        states[n] = final_state(run_dir)
        assert sorted(p.name for p in (run_dir / "masks").glob("*.png")) == (["epoch_000.png", "final.png"]
                                                                             if n else [])
    for state in states.values():  # what the two configs legitimately differ in
        assert state["config"]["train"].pop("name").startswith("pictures")
        state["config"]["train"].pop("picture_images")
    assert states[8]["step"] == 3
    _assert_same(states[8], states[0])
