"""Checkpoints: atomic saves, safe loads (``weights_only``), run-directory layout, RNG state, and the
one place that knows the older checkpoint layout (`upgrade_checkpoint`).

Layout: ``run_dir/checkpoints/step_00001234.pt``. A checkpoint is only ever visible under its final name
once completely written (temp file + fsync + ``os.replace``), so `latest_checkpoint` never sees a torn file.
"""

from __future__ import annotations

import io
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from discorep.fileio import atomic_write
from discorep.runs import (RANK_STATE_RE, CheckpointError, checkpoint_path, current_umask,  # noqa: F401
                           latest_checkpoint, list_checkpoints as _list_checkpoints, rank_state_path,
                           resolve_checkpoint)

_TEMP_RE = re.compile(r"^\.step_\d+\.pt\..+\.tmp$")  # what `fileio.atomic_write` names its temp files
_RANK_TEMP_RE = re.compile(r"^\.step_(\d+)\.rank\d+-of-\d+\.pt\..+\.tmp$")  # ... for per-rank parts


# ----------------------------------------------------------------------------------------------- layout
# checkpoint_path, latest_checkpoint and resolve_checkpoint live in the torch-free `discorep.runs`.


def prune_checkpoints(run_dir: str | Path, keep_last: int = 3) -> list[Path]:
    """Delete all but the ``keep_last`` highest-step checkpoints; returns the deleted paths.

    Also deletes temp files a killed writer left behind (``kill -9`` during a save): the run has one
    writer and calls this after its own save completed, so any remaining temp file is orphaned. Each
    rank's own part of a checkpoint (`rank_state_path`) goes with it; parts (and their temp files) of a
    step older than the newest checkpoint without a checkpoint of their own are orphans too, while newer
    ones may be another rank's save in progress and stay.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 (the newest checkpoint is never deleted), got {keep_last}")
    directory = Path(run_dir) / "checkpoints"
    found = _list_checkpoints(directory)
    kept = {step for step, _ in found[-keep_last:]}
    newest = max(kept, default=-1)
    removed = []
    if directory.is_dir():
        for path in directory.iterdir():
            part, temp = RANK_STATE_RE.match(path.name), _RANK_TEMP_RE.match(path.name)
            orphan = (part and int(part.group(1)) < newest and int(part.group(1)) not in kept) or (
                temp and int(temp.group(1)) < newest)
            if _TEMP_RE.match(path.name) or orphan:
                path.unlink(missing_ok=True)
                removed.append(path)
    for _, path in found[:-keep_last]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# ------------------------------------------------------------------------------------------- save / load


def _previous_checkpoint(path: Path) -> Optional[Path]:
    """The checkpoint a failed save leaves in place: ``path`` itself, else the newest in its folder."""
    if path.is_file():
        return path
    found = _list_checkpoints(path.parent)
    return found[-1][1] if found else None


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Atomically save ``state`` (tensors and plain containers only) to ``path``; returns the path.

    The state is serialised in memory first, so an unpicklable object fails before the disk is touched
    and a disk error (e.g. ENOSPC) cannot leave a half-written file: the temp file is removed and the
    previous checkpoint stays intact.
    """
    path = Path(path)
    buffer = io.BytesIO()
    try:
        torch.save(state, buffer)
    except (pickle.PicklingError, TypeError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"cannot serialise the checkpoint state for {path}: {exc}") from exc
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buffer.getbuffer())
    except OSError as exc:
        previous = _previous_checkpoint(path)
        kept = (f"the previous checkpoint {previous} is intact" if previous
                else "no earlier checkpoint existed; nothing was overwritten")
        raise CheckpointError(
            f"could not write checkpoint {path}: {exc.strerror or exc}; {kept}. "
            "Free disk space or fix permissions and resume."
        ) from exc
    return path


def save_rank_state(state: dict, checkpoint: str | Path, rank: int, world_size: int) -> Optional[Path]:
    """Atomically save rank `rank`'s own part of `checkpoint` beside it (`rank_state_path`); {} saves nothing."""
    return save_checkpoint(state, rank_state_path(checkpoint, rank, world_size)) if state else None


def load_rank_state(checkpoint: str | Path, rank: int, world_size: int) -> tuple[Optional[dict], str]:
    """(rank `rank`'s part of `checkpoint`, or None when it has none or it is unreadable; which file)."""
    path = rank_state_path(checkpoint, rank, world_size)
    if not path.is_file():
        return None, str(path)
    try:
        return load_checkpoint(path), str(path)
    except CheckpointError as exc:
        return None, f"{path} ({exc})"


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: it never executes code stored in the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check --resume or the run directory)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise CheckpointError(
                f"{path} is not a discorep checkpoint or contains code; refusing to execute it"
            ) from None
        raise CheckpointError(f"{path} is truncated or corrupted ({_first_line(exc)}); "
                              "delete it to resume from an earlier checkpoint") from None
    except Exception as exc:  # zip/EOF/storage errors of a truncated or foreign file
        raise CheckpointError(f"{path} is truncated or corrupted ({_first_line(exc)}); "
                              "delete it to resume from an earlier checkpoint") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a discorep checkpoint (top level is {type(state).__name__}, not dict)")
    return state


def load_weights(module: torch.nn.Module, weights: Any, *, what: str, path: str | Path, hint: str = "") -> None:
    """``module.load_state_dict(weights, strict=True)``; a mismatch becomes one CheckpointError that counts
    the missing, unexpected and reshaped keys with an example of each (torch's own message lists every key)."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: its {what} weights are missing or not a state dict; "
                              "not a checkpoint written by this discorep version?")
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    reshaped = [k for k in own if k in weights and hasattr(weights[k], "shape")
                and tuple(weights[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or reshaped):
        module.load_state_dict(weights, strict=True)
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} with another shape (e.g. {k}: file {list(weights[k].shape)}, "
                     f"model {list(own[k].shape)})")
    raise CheckpointError(f"{path}: its {what} weights do not fit: {', '.join(parts)}" + (f"; {hint}" if hint else ""))


def load_module_weights(module: torch.nn.Module, weights: Any, *, path: str | Path, hint: str = "") -> None:
    """`load_weights` of a whole module whose mismatch names the submodules it is in ("online weights ...")."""
    what = type(module).__name__
    if isinstance(weights, dict):
        own = module.state_dict()
        bad = set(own) ^ set(weights)
        bad |= {k for k in own if k in weights and hasattr(weights[k], "shape")
                and tuple(weights[k].shape) != tuple(own[k].shape)}
        parts = sorted({k.split(".")[0] for k in bad})  # e.g. online, predictor, target
        what = (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else "".join(parts)) or what
    load_weights(module, weights, what=what, path=path, hint=hint)


# ------------------------------------------------------------------------------------ format versions
# v2 (now): {"format", "step", "config", "world_size", "method": the method's whole state_dict(),
#   "eval_branch": {"encoder": prefix, "projector": prefix} (where in "method" the evaluated network is),
#   "optimizer", "scaler" (fp16), "rng", "skipped", "extra": method.extra_state_dict()}.
# v1 (discorep before the method registry): the same, but the networks part by part: "online", "target",
#   "heads": {"predictor"}, "discovery" (Odin, the hybrid); "config"'s `method:` listed every method's keys.
CHECKPOINT_FORMAT = "discorep-checkpoint-v2"
V1_FORMAT = "discorep-checkpoint-v1"
_V1_PARTS = ("online", "target", "discovery")  # v1 keys of networks; "heads": {"predictor"}
_V1_EVAL_BRANCH = {"encoder": "online.encoder.", "projector": "online.projector."}


def upgrade_checkpoint(state: dict) -> dict:
    """`state` in the current layout: a v1 checkpoint (or a bare {"online", "config"} file) is converted
    in memory, marked ``upgraded_from``; anything else is returned as it is (callers say what is missing)."""
    if state.get("format") == CHECKPOINT_FORMAT or not isinstance(state.get("online"), dict):
        return state
    heads = state.get("heads") if isinstance(state.get("heads"), dict) else {}
    parts = {"online": state.get("online"), "predictor": heads.get("predictor"), "target": state.get("target"),
             "discovery": state.get("discovery")}  # the order the methods' modules were built in
    method = {f"{name}.{k}": v for name, part in parts.items() if isinstance(part, dict) for k, v in part.items()}
    out = {k: v for k, v in state.items() if k not in (*_V1_PARTS, "heads")}
    out.update(format=CHECKPOINT_FORMAT, upgraded_from=state.get("format", V1_FORMAT), method=method,
               eval_branch=dict(_V1_EVAL_BRANCH))
    return out


def eval_weights(state: dict, part: str) -> dict:
    """The evaluated network's `part` ("encoder" or "projector") weights of a current-layout checkpoint."""
    prefix = (state.get("eval_branch") or {}).get(part)
    method = state.get("method")
    if not isinstance(prefix, str) or not isinstance(method, dict):
        return {}
    return {k[len(prefix):]: v for k, v in method.items() if k.startswith(prefix)}


def narrow_legacy_config(state: dict, method_keys: Any) -> None:
    """A v1 checkpoint's config lists every method's options under `method:`; keep `method_keys` (those of
    its method: the others never did anything), so `--resume` compares it with today's config. `method.module`
    is new in v2 (v1 had only built-in methods: None)."""
    config = state.get("config")
    if state.get("upgraded_from") and isinstance(config, dict) and isinstance(config.get("method"), dict):
        old = {"module": None, **config["method"]}
        config["method"] = {k: old[k] for k in method_keys if k in old}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# -------------------------------------------------------------------------------------------- RNG state


def get_rng_state() -> dict:
    """RNG states of python ``random``, numpy's global generator, torch CPU and every CUDA device.

    Stored as tensors and plain types so that `load_checkpoint` (``weights_only``) can read them.
    """
    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
        "numpy": {"kind": str(np_kind), "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `get_rng_state` returned; CUDA states are restored for the devices present."""
    try:
        py, npy = state["python"], state["numpy"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state((npy["kind"], keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["gauss"])))
        torch.set_rng_state(state["torch"].to(dtype=torch.uint8, device="cpu"))
        cuda_states = list(state.get("cuda", []))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"the checkpoint's RNG state is malformed ({_first_line(exc)})") from None
    _set_cuda_states(cuda_states)


def _set_cuda_states(cuda_states: list) -> None:
    if not cuda_states or not torch.cuda.is_available():
        return
    count = torch.cuda.device_count()
    if len(cuda_states) != count:
        warnings.warn(f"checkpoint has RNG states for {len(cuda_states)} CUDA devices, this machine has "
                      f"{count}; restoring the first {min(count, len(cuda_states))}", stacklevel=3)
    for device, s in enumerate(cuda_states[:count]):
        torch.cuda.set_rng_state(s.to(dtype=torch.uint8, device="cpu"), device)
