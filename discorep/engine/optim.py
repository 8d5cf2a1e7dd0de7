"""Optimizers: LARS (BYOL / SimCLR formulation), parameter groups without decay, builders, clipping.

LARS update for one parameter ``w`` with gradient ``g`` in a group with learning rate ``lr``, momentum
``m``, weight decay ``wd`` and trust coefficient ``eta`` (You et al. 2017, as used by SimCLR and BYOL):

    u     = g + wd · w                                   (wd = 0 for ``lars_exclude`` groups)
    trust = eta · ‖w‖ / ‖u‖  if ‖w‖ > 0 and ‖u‖ > 0 else 1  (trust = 1 for ``lars_exclude`` groups)
    v     ← m · v + trust · lr · u                        (the learning rate lives inside the buffer)
    w     ← w − v                      or, with nesterov:  w ← w − (m · v + trust · lr · u)

So an excluded group is SGD with momentum and no weight decay (identical to ``torch.optim.SGD`` while
the learning rate is constant; with a schedule, past steps keep the lr they were taken with).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Literal, Mapping, Optional, Sequence, Union

import torch
from torch import nn

ModuleSpec = Union[nn.Module, Mapping[str, nn.Module], Sequence[Union[nn.Module, tuple[str, nn.Module]]]]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling with per-group ``lars_exclude`` (see module docstring)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
        nesterov: bool = False,
    ) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay), ("eta", eta)):
            if not value >= 0.0:
                raise ValueError(f"LARS: {name} must be >= 0, got {value}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None) -> Optional[torch.Tensor]:
        """Apply one LARS update to every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("LARS does not support sparse gradients")
            if params:
                self._update_group(params, group)
        return loss

    def _update_group(self, params: list[torch.Tensor], group: dict) -> None:
        """The update of the module docstring for all parameters of a group at once.

        foreach ops: on a GPU one fused kernel per operation instead of one per parameter (a ResNet-50
        with heads has ~170 parameters, ~10 operations each); values are the same as one at a time.
        """
        exclude = bool(group["lars_exclude"])
        u = [p.grad for p in params]
        if not exclude and group["weight_decay"] != 0:
            u = torch._foreach_add(u, params, alpha=group["weight_decay"])
        if exclude:
            step = torch._foreach_mul(u, group["lr"])
        else:
            w_norm = torch.stack(torch._foreach_norm(params))
            u_norm = torch.stack(torch._foreach_norm(u))
            # torch.where keeps this on the device: no host sync per parameter.
            trust = torch.where((w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm,
                                torch.ones_like(w_norm))
            step = torch._foreach_mul(u, list((trust * group["lr"]).unbind()))
        if group["momentum"] != 0:
            bufs = [self._momentum_buffer(p) for p in params]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, step)
            if group["nesterov"]:
                step = torch._foreach_add(torch._foreach_mul(bufs, group["momentum"]), step)
            else:
                step = bufs
        torch._foreach_sub_(params, step)

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        return state["momentum_buffer"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into ``decay`` and ``no_decay`` groups.

    Every parameter with ``ndim <= 1`` (biases and all BN/GN/LN weights and biases, including the stem
    ``bn1`` that the public R2O code leaves in the decayed group) gets ``weight_decay=0`` and
    ``lars_exclude=True``. Frozen parameters (``requires_grad=False``) are left out. Each group records
    ``name`` and ``param_names`` for logging; empty groups are dropped.
    """
    return _split_groups(model.named_parameters(), weight_decay)


def _split_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """`param_groups` over explicit (name, parameter) pairs."""
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, p in named:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append((name, p))
    groups = [
        dict(name="decay", params=[p for _, p in decay], param_names=[n for n, _ in decay],
             weight_decay=weight_decay, lars_exclude=False),
        dict(name="no_decay", params=[p for _, p in no_decay], param_names=[n for n, _ in no_decay],
             weight_decay=0.0, lars_exclude=True),
    ]
    return [g for g in groups if g["params"]]


def _named_parameters(modules: ModuleSpec) -> list[tuple[str, nn.Parameter]]:
    """Unique (prefixed name, parameter) pairs of a module, a dict or a list of (named) modules."""
    if isinstance(modules, nn.Module):
        items: list[tuple[str, nn.Module]] = [("", modules)]
    elif isinstance(modules, Mapping):
        items = list(modules.items())
    else:
        items = [m if isinstance(m, tuple) else (f"m{i}", m) for i, m in enumerate(modules)]
    seen: set[int] = set()
    out = []
    for prefix, module in items:
        if not isinstance(module, nn.Module):
            raise TypeError(f"build_optimizer: expected nn.Module for '{prefix}', got {type(module).__name__}")
        for name, p in module.named_parameters():
            if id(p) not in seen:  # parameters shared between modules are optimised once
                seen.add(id(p))
                out.append((f"{prefix}.{name}" if prefix else name, p))
    return out


_OPTIONS = {
    "lars": {"momentum", "eta", "nesterov"},
    "sgd": {"momentum", "nesterov"},
    "adamw": {"betas", "eps"},
}


def build_optimizer(
    name: Literal["lars", "adamw", "sgd"],
    modules: ModuleSpec,
    lr: float,
    weight_decay: float,
    **kw: Any,
) -> torch.optim.Optimizer:
    """Optimizer over the trainable parameters of ``modules`` with `param_groups` (no decay for ndim<=1).

    ``modules`` is a module, a ``{name: module}`` dict, or a list of modules / ``(name, module)`` pairs.
    Options: lars (momentum=0.9, eta=1e-3, nesterov=False); sgd (momentum=0.9, nesterov=False);
    adamw (betas=(0.9, 0.95) as for ViTs, eps=1e-8).
    """
    if name not in _OPTIONS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(_OPTIONS)}")
    unknown = set(kw) - _OPTIONS[name]
    if unknown:
        raise ValueError(f"optimizer {name!r} does not take {sorted(unknown)}; options: {sorted(_OPTIONS[name])}")
    groups = _split_groups(_named_parameters(modules), weight_decay)
    if not groups:
        raise ValueError("build_optimizer: no trainable parameters (all frozen or none given)")
    if name == "lars":
        return LARS(groups, lr=lr, weight_decay=weight_decay, momentum=kw.get("momentum", 0.9),
                    eta=kw.get("eta", 1e-3), nesterov=kw.get("nesterov", False))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=kw.get("momentum", 0.9),
                               nesterov=kw.get("nesterov", False))
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=tuple(kw.get("betas", (0.9, 0.95))),
                             eps=kw.get("eps", 1e-8))


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: Optional[float]) -> Optional[torch.Tensor]:
    """Clip the global L2 gradient norm to ``max_norm``; returns the norm before clipping as a tensor.

    A tensor, not a float: reading it back would be a host-device sync every step on GPUs
    (discorep/hostsync.py). ``max_norm=None`` disables clipping and returns None (no extra reduction).
    A non-finite norm is returned as is (the engine's non-finite policy decides), never raised.
    """
    if max_norm is None:
        return None
    if not max_norm > 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0 or None, got {max_norm}")
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.clip_grad_norm_(grads, max_norm, error_if_nonfinite=False)
