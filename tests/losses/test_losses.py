"""Losses against hand-computed values and an independent loop-based reference (Odin eq. 2–4)."""

import math

import pytest
import torch
import torch.nn.functional as F

from discorep.losses.byol import byol_loss, regression_loss
from discorep.losses.contrastive import contrastive_loss
from discorep.losses.distributed import gather_padded


# ----------------------------------------------------------------------------- BYOL
def test_byol_hand_values_and_weights():
    pred = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0]])
    expected = torch.tensor([2.0, 0.0, 2.0 - math.sqrt(2.0)])
    assert torch.allclose(regression_loss(pred, target), expected, atol=1e-6)
    assert torch.isclose(byol_loss(pred, target), expected.mean(), atol=1e-6)
    w = torch.tensor([1.0, 0.0, 3.0])
    weighted = (1.0 * 2.0 + 3.0 * (2.0 - math.sqrt(2.0))) / 4.0
    assert torch.isclose(byol_loss(pred, target, w), torch.tensor(weighted), atol=1e-6)


def test_byol_zero_weights_and_stop_gradient():
    pred = torch.randn(4, 8, requires_grad=True)
    target = torch.randn(4, 8, requires_grad=True)
    loss = byol_loss(pred, target, torch.zeros(4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))
    assert target.grad is None


def test_byol_rejects_bad_shapes():
    with pytest.raises(ValueError, match="equal shapes"):
        byol_loss(torch.randn(4, 8), torch.randn(4, 7))
    with pytest.raises(ValueError, match="weight"):
        byol_loss(torch.randn(4, 8), torch.randn(4, 8), torch.ones(3))


# ----------------------------------------------------------------------------- contrastive
def reference_contrastive(p1, t2, p2, t1, valid, ids, alpha, same_view=True):
    """Explicit loops: for every valid anchor, −log softmax of the positive against a negative list.

    same_view: DetCon's reference also takes negatives from the anchor's own view's targets."""
    b_n, m_n, _ = p1.shape
    p1, t2, p2, t1 = (x.double() for x in (p1, t2, p2, t1))

    def sim(a, b):
        return torch.dot(a, b) / (a.norm() * b.norm()) / alpha

    total, count = 0.0, 0
    for b in range(b_n):
        for m in range(m_n):
            if not valid[b, m]:
                continue
            count += 1
            for p, t, own in ((p1, t2, t1), (p2, t1, t2)):
                pos = sim(p[b, m], t[b, m])
                negs = []
                for keys in ((t, own) if same_view else (t,)):
                    for b2 in range(b_n):
                        for m2 in range(m_n):
                            if not valid[b2, m2]:
                                continue
                            if b2 == b and (m2 == m or (ids is not None and ids[b, m2] == ids[b, m])):
                                continue
                            negs.append(sim(p[b, m], keys[b2, m2]))
                total += -pos + torch.logsumexp(torch.stack([pos, *negs]), 0)
    return total / max(count, 1)


def _inputs(b=3, m=4, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    p1, t2, p2, t1 = (torch.randn(b, m, d, generator=g) for _ in range(4))
    valid = torch.rand(b, m, generator=g) > 0.3
    valid[0, 0] = True
    ids = torch.randint(0, 3, (b, m), generator=g)
    ids[1, :2] = 2  # a guaranteed duplicate in image 1
    valid[1, :2] = True
    return p1, t2, p2, t1, valid, ids


@pytest.mark.parametrize("negatives", ["cross_and_same_view", "cross_view"])
@pytest.mark.parametrize("use_ids", [False, True])
@pytest.mark.parametrize("alpha", [0.1, 0.7])
def test_contrastive_matches_loop_reference(use_ids, alpha, negatives):
    p1, t2, p2, t1, valid, ids = _inputs()
    ids = ids if use_ids else None
    got = contrastive_loss(p1, t2, p2, t1, valid, temperature=alpha, ids=ids, negatives=negatives)
    want = reference_contrastive(p1, t2, p2, t1, valid, ids, alpha, same_view=negatives == "cross_and_same_view")
    assert torch.isclose(got.double(), torch.as_tensor(want), rtol=1e-5, atol=1e-5)


def test_contrastive_duplicates_change_the_loss():
    """Guard that the reference test really exercises the id exclusion."""
    p1, t2, p2, t1, valid, ids = _inputs()
    with_ids = contrastive_loss(p1, t2, p2, t1, valid, ids=ids)
    without = contrastive_loss(p1, t2, p2, t1, valid)
    assert not torch.isclose(with_ids, without)


def test_contrastive_hand_case():
    """Two orthogonal masks, perfect positives (cos 1 → logit 1/α = 2, orthogonal → 0): cross-view
    negatives give each term log(1 + exp(−2)); DetCon's same-view negatives add the other mask of the
    anchor's own view once more: log(1 + 2·exp(−2)). 2 directions per anchor."""
    e = torch.eye(2).reshape(1, 2, 2)
    valid = torch.ones(1, 2, dtype=torch.bool)
    cross = contrastive_loss(e, e, e, e, valid, temperature=0.5, negatives="cross_view")
    assert torch.isclose(cross, torch.tensor(2.0 * math.log1p(math.exp(-2.0))), rtol=1e-5)
    both = contrastive_loss(e, e, e, e, valid, temperature=0.5)
    assert torch.isclose(both, torch.tensor(2.0 * math.log1p(2.0 * math.exp(-2.0))), rtol=1e-5)


def test_contrastive_invalid_entries_are_ignored():
    p1, t2, p2, t1, valid, ids = _inputs()
    base = contrastive_loss(p1, t2, p2, t1, valid, ids=ids)
    junk = [x.clone() for x in (p1, t2, p2, t1)]
    for x in junk:
        x[~valid] = torch.randn(int((~valid).sum()), x.shape[-1]) * 100
    assert torch.isclose(contrastive_loss(*junk, valid, ids=ids), base, atol=1e-6)


def test_contrastive_gradients_only_reach_predictions():
    p1, t2, p2, t1, valid, ids = _inputs()
    for x in (p1, t2, p2, t1):
        x.requires_grad_(True)
    contrastive_loss(p1, t2, p2, t1, valid, ids=ids).backward()
    assert t1.grad is None and t2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0
    assert torch.equal(p1.grad[~valid], torch.zeros_like(p1.grad[~valid]))


def test_contrastive_gradient_matches_reference():
    p1, t2, p2, t1, valid, ids = _inputs()
    a = p1.clone().requires_grad_(True)
    contrastive_loss(a, t2, p2, t1, valid, ids=ids).backward()
    r = p1.clone().double().requires_grad_(True)
    reference_contrastive(r, t2, p2, t1, valid, ids, 0.1).backward()
    assert torch.allclose(a.grad.double(), r.grad, atol=1e-5)


def test_contrastive_no_valid_anchor_is_zero_with_graph():
    p1, t2, p2, t1, _, ids = _inputs()
    p1.requires_grad_(True)
    loss = contrastive_loss(p1, t2, p2, t1, torch.zeros(3, 4, dtype=torch.bool), ids=ids)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(p1.grad).all() and p1.grad.abs().sum() == 0


def test_contrastive_matches_cross_entropy_oracle_without_masking():
    """All valid, no ids: direction 1→2 is CE over [positive, all other masks of the batch]."""
    p1, t2, p2, t1, _, _ = _inputs(b=2, m=3, d=5, seed=3)
    valid = torch.ones(2, 3, dtype=torch.bool)
    alpha = 0.2

    def ce(p, t):
        logits = F.normalize(p.flatten(0, 1), dim=-1) @ F.normalize(t.flatten(0, 1), dim=-1).t() / alpha
        return F.cross_entropy(logits, torch.arange(logits.shape[0]))

    want = ce(p1, t2) + ce(p2, t1)
    got = contrastive_loss(p1, t2, p2, t1, valid, temperature=alpha, negatives="cross_view")
    assert torch.isclose(got, want, atol=1e-5)

    def ce_same_view(p, t_other, t_own):
        """DetCon's logits [ab, aa]: the own view's own mask is removed (−inf), never a positive."""
        q = F.normalize(p.flatten(0, 1), dim=-1)
        ab = q @ F.normalize(t_other.flatten(0, 1), dim=-1).t() / alpha
        aa = q @ F.normalize(t_own.flatten(0, 1), dim=-1).t() / alpha
        aa = aa.masked_fill(torch.eye(aa.shape[0], dtype=torch.bool), float("-inf"))
        return F.cross_entropy(torch.cat([ab, aa], 1), torch.arange(ab.shape[0]))

    want = ce_same_view(p1, t2, t1) + ce_same_view(p2, t1, t2)
    assert torch.isclose(contrastive_loss(p1, t2, p2, t1, valid, temperature=alpha), want, atol=1e-5)


def test_contrastive_rejects_bad_input():
    p1, t2, p2, t1, valid, ids = _inputs()
    with pytest.raises(ValueError, match="target2"):
        contrastive_loss(p1, t2[:, :2], p2, t1, valid)
    with pytest.raises(ValueError, match="valid"):
        contrastive_loss(p1, t2, p2, t1, valid[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(p1, t2, p2, t1, valid, temperature=0.0)
    with pytest.raises(ValueError, match="ids"):
        contrastive_loss(p1, t2, p2, t1, valid, ids=ids.float())


def test_gather_padded_pads_with_zero_rows_and_refuses_a_bound_below_the_batch():
    x = torch.arange(6.0).reshape(2, 3)
    out = gather_padded(x, 4)  # one process: this rank's rows, then zeros up to the bound
    assert torch.equal(out, torch.cat([x, torch.zeros(2, 3)]))
    with pytest.raises(ValueError, match="rows must be an int >= this rank's 2 rows"):
        gather_padded(x, 1)
