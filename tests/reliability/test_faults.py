"""Faults: a DDP peer dying mid-run, kill -9 then --resume auto (bit-exact), interrupted writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.config import Config
from discorep.engine.configio import from_dict, save_config, to_dict
from discorep.engine.train import pretrain
from tests.helpers import free_port, steps_logged, tiny_config


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 16, seed=7, image_size=(96, 96))
    return root / "images"


def _dying_worker(rank: int, port: int, cfg_dict: dict, result_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from discorep.methods.byol import BYOL

    forward = BYOL.forward

    def dying_forward(self, batch, info):
        if rank == 1 and info.step == 3:
            os._exit(9)  # as if killed by the OOM killer
        return forward(self, batch, info)

    BYOL.forward = dying_forward
    from discorep.engine.train import PeerLostError

    start = time.time()
    try:
        pretrain(from_dict(Config, cfg_dict))
    except PeerLostError as err:
        with open(os.path.join(result_dir, "rank0.txt"), "w") as f:
            f.write(f"{time.time() - start:.2f}\n{err}")


@pytest.mark.distributed
def test_surviving_process_exits_quickly_with_a_clear_message(outcome, scenes, tmp_path):
    cfg = tiny_config("byol", scenes, tmp_path, {"train": {"max_steps": 8, "batch_size": 2, "checkpoint_every": 2}})
    # Not mp.spawn(join=True): it SIGTERMs the survivor as soon as the peer dies, before the survivor
    # can notice the loss itself, which is the behaviour under test.
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_dying_worker, args=(rank, port, to_dict(cfg), str(tmp_path))) for rank in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0, 9]
    report = (tmp_path / "rank0.txt").read_text().splitlines()
    assert float(report[0]) < 60  # bounded: no hang until the process-group timeout
    message = "\n".join(report[1:])
    assert "lost contact with another process at step 3" in message
    assert "step_00000002.pt" in message and "--resume auto" in message
    outcome("fault", "DDP peer killed (2 gloo processes)", f"PeerLostError after {float(report[0]):.1f} s naming step and checkpoint")


@pytest.mark.slow
def test_kill_9_then_resume_auto_ends_bit_identical(outcome, scenes, tmp_path):
    extra = {"train": {"epochs": 3, "checkpoint_every": 2}}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads for both runs: same float reductions
    ref_config = save_config(tiny_config("r2o", scenes, tmp_path / "ref", extra), tmp_path / "ref.yaml")
    subprocess.run([sys.executable, "-m", "discorep.cli", "pretrain", "--config", str(ref_config)], env=env,
                   check=True, capture_output=True, timeout=600)
    reference = tmp_path / "ref" / "r2o"
    config = save_config(tiny_config("r2o", scenes, tmp_path / "runs", extra), tmp_path / "cfg.yaml")
    cmd = [sys.executable, "-m", "discorep.cli", "pretrain", "--config", str(config)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "runs" / "r2o"
    deadline = time.time() + 120
    while steps_logged(run_dir) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = steps_logged(run_dir)
    assert 5 <= killed_at < 12, "the run should have been killed mid-way"
    done = subprocess.run(cmd + ["--resume", "auto"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = load_checkpoint(latest_checkpoint(reference)), load_checkpoint(latest_checkpoint(run_dir))
    assert a["step"] == b["step"] == 12
    assert list(a["method"]) == list(b["method"])
    for key, value in a["method"].items():  # online, target, predictor
        assert torch.equal(value, b["method"][key]), key
    outcome("fault", f"kill -9 after step {killed_at}, then --resume auto", "final parameters bit-identical to an uninterrupted run")
