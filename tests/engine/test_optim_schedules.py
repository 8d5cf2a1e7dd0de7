"""engine.optim (LARS vs a numpy reference, parameter groups) and engine.schedules (hand-computed values)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from discorep.engine.optim import LARS, build_optimizer, clip_grad_norm, param_groups
from discorep.engine.schedules import (
    ema_tau_at,
    k_at,
    k_lr_scale,
    lr_at,
    scaled_lr,
)
from tests.oracles import discrete_update_due

# --------------------------------------------------------------------------------------------- LARS


def _lars_reference(w, grads, lrs, m, wd, eta, nesterov=False, exclude=False):
    """Straight numpy transcription of the SimCLR/BYOL LARS update (module docstring of engine.optim)."""
    w = w.astype(np.float64).copy()
    v = np.zeros_like(w)
    for g, lr in zip(grads, lrs):
        u = g if exclude else g + wd * w
        trust = 1.0
        if not exclude and np.linalg.norm(w) > 0 and np.linalg.norm(u) > 0:
            trust = eta * np.linalg.norm(w) / np.linalg.norm(u)
        v = m * v + trust * lr * u
        w = w - (m * v + trust * lr * u if nesterov else v)
    return w


def _run_lars(w0, grads, lrs, **kw):
    exclude = kw.pop("exclude", False)
    p = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = LARS([{"params": [p], "lars_exclude": exclude}], lr=lrs[0], **kw)
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return p.detach().numpy()


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_two_steps_match_numpy_reference(nesterov, rng):
    w0 = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)), rng.normal(size=(3, 4))]
    lrs = [0.5, 0.2]  # a schedule: lr lives inside the momentum buffer
    kw = dict(momentum=0.9, weight_decay=0.1, eta=0.02, nesterov=nesterov)
    got = _run_lars(w0, grads, lrs, **kw)
    np.testing.assert_allclose(got, _lars_reference(w0, grads, lrs, 0.9, 0.1, 0.02, nesterov), rtol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_updates_each_parameter_of_a_group_with_its_own_trust_ratio(nesterov, rng):
    # Several parameters of different shapes and norms in one group (the update is done for the whole
    # group at once): each must follow its own single-parameter reference; one starts at zero (trust 1).
    shapes = [(3, 4), (7,), (2, 2, 2)]
    w0s = [rng.normal(size=s) * scale for s, scale in zip(shapes, (1.0, 10.0, 0.0))]
    grads = [[rng.normal(size=s) for s in shapes] for _ in range(3)]
    lrs = [0.5, 0.3, 0.1]
    params = [nn.Parameter(torch.tensor(w, dtype=torch.float64)) for w in w0s]
    opt = LARS([{"params": params}], lr=lrs[0], momentum=0.9, weight_decay=0.1, eta=0.02, nesterov=nesterov)
    for step, lr in enumerate(lrs):
        opt.param_groups[0]["lr"] = lr
        for p, g in zip(params, grads[step]):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    for i, p in enumerate(params):
        ref = _lars_reference(w0s[i], [g[i] for g in grads], lrs, 0.9, 0.1, 0.02, nesterov)
        np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-12, atol=1e-15)


def test_lars_one_step_hand_computed():
    # w = (3, 4): ‖w‖ = 5; g = (0, 1), wd = 0.5 -> u = (1.5, 3), ‖u‖ = √11.25; trust = 0.1·5/√11.25.
    got = _run_lars(np.array([3.0, 4.0]), [np.array([0.0, 1.0])], [2.0], momentum=0.9, weight_decay=0.5, eta=0.1)
    trust = 0.1 * 5 / math.sqrt(11.25)
    np.testing.assert_allclose(got, [3 - 2 * trust * 1.5, 4 - 2 * trust * 3.0], rtol=1e-12)


def test_lars_zero_weight_uses_trust_one():
    got = _run_lars(np.zeros(2), [np.array([1.0, -2.0])], [0.1], momentum=0.0, weight_decay=0.1, eta=1e-3)
    np.testing.assert_allclose(got, [-0.1, 0.2])


def test_lars_excluded_group_is_sgd_momentum_without_decay(rng):
    w0 = rng.normal(size=5)
    grads = [rng.normal(size=5) for _ in range(3)]
    got = _run_lars(w0, grads, [0.3] * 3, momentum=0.9, weight_decay=0.5, eta=1e-3, exclude=True)
    p = nn.Parameter(torch.tensor(w0))
    sgd = torch.optim.SGD([p], lr=0.3, momentum=0.9)
    for g in grads:
        p.grad = torch.tensor(g)
        sgd.step()
    np.testing.assert_allclose(got, p.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(got, _lars_reference(w0, grads, [0.3] * 3, 0.9, 0.0, 0.0, exclude=True), rtol=1e-12)


def test_lars_state_dict_round_trip_continues_identically(rng):
    def make():
        torch.manual_seed(0)
        return nn.Linear(4, 3)

    a, b = make(), make()
    opt_a = build_optimizer("lars", a, lr=0.1, weight_decay=1e-2)
    x = torch.tensor(rng.normal(size=(8, 4)), dtype=torch.float32)
    a(x).square().sum().backward()
    opt_a.step()
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer("lars", b, lr=0.1, weight_decay=1e-2)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as if saved and loaded: no shared buffers
    for model, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


# ----------------------------------------------------------------------------------- parameter groups


def test_param_groups_exclude_every_low_dim_param_of_resnet18():
    model = resnet18()
    groups = {g["name"]: g for g in param_groups(model, weight_decay=1e-6)}
    named = dict(model.named_parameters())
    low = {n for n, p in named.items() if p.ndim <= 1}
    assert set(groups["no_decay"]["param_names"]) == low
    assert {"bn1.weight", "bn1.bias", "fc.bias", "layer1.0.bn2.weight"} <= low  # stem bn1 included
    assert set(groups["decay"]["param_names"]) == set(named) - low
    assert all(p.ndim > 1 for p in groups["decay"]["params"])
    assert len(groups["no_decay"]["params"]) == len(low) and len(groups["decay"]["params"]) == len(named) - len(low)
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["no_decay"]["lars_exclude"] is True
    assert groups["decay"]["weight_decay"] == 1e-6 and groups["decay"]["lars_exclude"] is False


def test_build_optimizer_named_modules_shared_and_frozen_params():
    backbone, head = nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    head[0].weight = backbone.weight  # shared: must be optimised once
    frozen = nn.Linear(2, 2).requires_grad_(False)
    opt = build_optimizer("adamw", [("backbone", backbone), ("head", head), ("frozen", frozen)],
                          lr=1e-3, weight_decay=0.05)
    names = [n for g in opt.param_groups for n in g["param_names"]]
    assert sorted(names) == ["backbone.bias", "backbone.weight", "head.0.bias", "head.1.bias", "head.1.weight"]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    sgd = build_optimizer("sgd", {"m": backbone}, lr=0.1, weight_decay=1e-4)
    assert [g["weight_decay"] for g in sgd.param_groups] == [1e-4, 0.0]
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("adam", backbone, lr=0.1, weight_decay=0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not take"):
        build_optimizer("sgd", backbone, lr=0.1, weight_decay=0.0, eta=1.0)


def test_clip_grad_norm_returns_norm_and_clips():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert clip_grad_norm([p], None) is None and torch.equal(p.grad, torch.tensor([3.0, 4.0]))
    assert float(clip_grad_norm([p], 1.0)) == pytest.approx(5.0)
    assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(1.0, rel=1e-5)


# -------------------------------------------------------------------------------------------- schedules


def test_scaled_lr():
    assert scaled_lr(0.2, 4096) == pytest.approx(3.2) and scaled_lr(0.3, 256) == pytest.approx(0.3)


def test_lr_at_warmup_midpoint_end():
    kw = dict(total_steps=110, warmup_steps=10, peak_lr=2.0, final_lr=0.2)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(5, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(2.0)
    assert lr_at(60, **kw) == pytest.approx(1.1)  # cosine midpoint: (2 + 0.2) / 2
    assert lr_at(35, **kw) == pytest.approx(0.2 + 1.8 * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_at(110, **kw) == pytest.approx(0.2) and lr_at(500, **kw) == pytest.approx(0.2)
    assert lr_at(0, 100, 0, 1.0) == pytest.approx(1.0)
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_ema_tau():
    assert ema_tau_at(0, 100) == pytest.approx(0.99)
    assert ema_tau_at(50, 100) == pytest.approx(0.995)
    assert ema_tau_at(100, 100) == pytest.approx(1.0) and ema_tau_at(200, 100) == pytest.approx(1.0)
    assert ema_tau_at(0, 100, tau_base=0.996) == pytest.approx(0.996)


def test_k_at_cosine_region_to_object():
    kw = dict(schedule="cosine", K0=128, K_f=4, t_alpha=40, T=300)
    assert k_at(0, **kw) == 128 and k_at(39.5, **kw) == 128 and k_at(40, **kw) == 128
    assert k_at(300, **kw) == 4 and k_at(350, **kw) == 4
    # midpoint of the curriculum: 4 + 124·cos(π/4) = 91.68, truncated like the public scheduler's int(k)
    assert k_at(170, **kw) == 91
    # R2O Fig. 5 (A.10), the paper's settings: "At 100 epoch, K = 119. At 200 epoch, K = 74." By hand:
    # 4 + 124·cos(π/2 · 60/260) = 119.94 and 4 + 124·cos(π/2 · 160/260) = 74.59 (nearest: 120 and 75).
    assert k_at(100, **kw) == 119 and k_at(200, **kw) == 74
    values = [k_at(t / 2, **kw) for t in range(0, 601)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_k_at_object_to_region_and_linear_and_fixed():
    up = [k_at(t, schedule="cosine", K0=4, K_f=128, t_alpha=40, T=300) for t in range(0, 301)]
    assert up[0] == 4 and up[40] == 4 and up[300] == 128
    assert all(a <= b for a, b in zip(up, up[1:]))
    lin = dict(schedule="linear", K0=128, K_f=4, t_alpha=40, T=300)
    assert k_at(40, **lin) == 128 and k_at(170, **lin) == 66 and k_at(300, **lin) == 4
    assert k_at(105, **lin) == 97  # 128 − 124·65/260 = 97
    assert all(k_at(t, schedule="fixed", K0=16) == 16 for t in (0, 50, 299))
    with pytest.raises(ValueError, match="schedule"):
        k_at(100, schedule="exp")  # type: ignore[arg-type]


def test_k_lr_scale_and_discrete_updates():
    assert k_lr_scale(128) == 8.0 and k_lr_scale(4, reference=16) == 0.25
    due = [e for e in range(0, 401) if discrete_update_due(e, 100)]
    assert due == [100, 200, 300, 400]
    assert not discrete_update_due(100.5, 100)
