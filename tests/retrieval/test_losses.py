"""The sampled softmax against a brute-force reference with explicit loops, logQ and masking included."""

from __future__ import annotations

import math

import torch

from retrieval.losses import (
    Candidates,
    bonus_nll,
    column_bias,
    interest_scores,
    matches,
    softmax_logits,
    softmax_nll,
    softmax_nll_lse,
)


def sampled_softmax_loss(query, target, weight, query_user, cand, cand_item, cand_user, cand_log_q=None, neg=None,
                         neg_item=None, neg_log_q=None, cand_bonus=None, neg_bonus=None):
    """The loss as the model composes it: logits over the two candidate groups, the repeat bonus added, the NLL."""
    negs = None if neg is None else Candidates(neg, neg_item, neg_log_q)
    logits = softmax_logits(query, target, query_user, Candidates(cand, cand_item, cand_log_q, cand_user), negs)
    if cand_bonus is not None:
        logits = logits + (cand_bonus if logits.shape[1] == cand.shape[0] else torch.cat([cand_bonus, neg_bonus], 1))
    return softmax_nll(logits, target, weight)


def dot(q, c) -> float:
    """A query's score of one candidate: the inner product, or with K interests ([K, D]) the best one."""
    return float(q @ c) if q.dim() == 1 else max(float(k @ c) for k in q)


def reference(query, target, weight, query_user, cand, cand_item, cand_user, cand_log_q, neg, neg_item, neg_log_q,
              cand_bonus=None, neg_bonus=None):
    """One example at a time: list the allowed candidates, compute -log softmax of the positive."""
    total, wsum = 0.0, 0.0
    for r in range(len(query)):
        t = int(target[r])
        pos_item, user = int(cand_item[t]), int(query_user[r])
        user_items = {int(cand_item[j]) for j in range(len(cand)) if int(cand_user[j]) == user}
        logits, pos_logit = [], None
        for j in range(len(cand)):
            s = dot(query[r], cand[j]) - (float(cand_log_q[j]) if cand_log_q is not None else 0.0)
            s += float(cand_bonus[r, j]) if cand_bonus is not None else 0.0
            if j == t:
                pos_logit = s
                continue
            if int(cand_item[j]) == pos_item or int(cand_user[j]) == user:
                continue  # accidental hit, or another positive of the same user
            if any(int(cand_item[i]) == int(cand_item[j]) for i in range(j)):
                continue  # a repeat of an item already among the candidates
            logits.append(s)
        logits.append(pos_logit)
        for n in range(0 if neg is None else len(neg)):
            if int(neg_item[n]) == pos_item or int(neg_item[n]) in user_items:
                continue
            logits.append(dot(query[r], neg[n]) - (float(neg_log_q[n]) if neg_log_q is not None else 0.0)
                          + (float(neg_bonus[r, n]) if neg_bonus is not None else 0.0))
        lse = max(logits) + math.log(sum(math.exp(x - max(logits)) for x in logits))
        total += float(weight[r]) * (lse - pos_logit)
        wsum += float(weight[r])
    return total / wsum


def make(seed=0, B=8, N=6, D=4, R=None):
    g = torch.Generator().manual_seed(seed)
    cand = torch.randn(B, D, generator=g, dtype=torch.float64)
    target = torch.arange(B) if R is None else torch.randperm(B, generator=g)[:R]
    return dict(
        query=torch.randn(len(target), D, generator=g, dtype=torch.float64), target=target,
        weight=torch.rand(len(target), generator=g, dtype=torch.float64) + 0.1,
        query_user=torch.tensor([0, 1, 0, 2, 3, 1, 4, 5])[target],
        cand=cand, cand_item=torch.tensor([10, 11, 12, 10, 13, 14, 15, 16]), cand_user=torch.tensor([0, 1, 0, 2, 3, 1, 4, 5]),
        cand_log_q=torch.log(torch.rand(B, generator=g, dtype=torch.float64) * 0.5 + 0.01),
        neg=torch.randn(N, D, generator=g, dtype=torch.float64), neg_item=torch.tensor([12, 20, 21, 10, 22, 14]),
        neg_log_q=torch.full((N,), math.log(6 / 100), dtype=torch.float64),
    )


def test_matches_reference_with_logq_and_masking():
    for seed in range(5):
        a = make(seed)
        assert torch.allclose(sampled_softmax_loss(**a), torch.tensor(reference(**a), dtype=torch.float64))


def test_matches_reference_on_a_subset_of_rows():
    a = make(3, R=5)
    assert torch.allclose(sampled_softmax_loss(**a), torch.tensor(reference(**a), dtype=torch.float64))


def test_matches_reference_with_a_repeat_bonus():
    a = make(2, R=6)
    g = torch.Generator().manual_seed(7)
    a.update(cand_bonus=torch.rand(6, 8, generator=g, dtype=torch.float64) * 3,
             neg_bonus=torch.rand(6, 6, generator=g, dtype=torch.float64) * 3)
    with_bonus = sampled_softmax_loss(**a)
    assert torch.allclose(with_bonus, torch.tensor(reference(**a), dtype=torch.float64))
    assert not torch.allclose(with_bonus, sampled_softmax_loss(**dict(a, cand_bonus=None, neg_bonus=None)))


def test_matches_reference_without_logq_or_negatives():
    a = make(1)
    a.update(cand_log_q=None, neg_log_q=None)
    assert torch.allclose(sampled_softmax_loss(**a), torch.tensor(reference(**a), dtype=torch.float64))
    a.update(neg=None, neg_item=None)
    assert torch.allclose(sampled_softmax_loss(**a), torch.tensor(reference(**a), dtype=torch.float64))


def test_masking_changes_the_loss():
    """Row 0 (user 0, item 10) shares item 10 with row 3 and user 0 with row 2: both columns must be dropped."""
    a = make(0)
    masked = sampled_softmax_loss(**a)
    a.update(cand_item=torch.arange(100, 108), cand_user=torch.arange(8), query_user=torch.arange(8),
             neg_item=torch.arange(200, 206))
    assert not torch.allclose(masked, sampled_softmax_loss(**a))


def test_logq_lowers_popular_negatives_weight():
    """With logQ, a frequently sampled negative is penalised less: the loss falls when its q rises."""
    a = make(2)
    base = sampled_softmax_loss(**a)
    a["neg_log_q"] = a["neg_log_q"].clone()
    a["neg_log_q"][1] += 3.0  # item 20 sampled far more often than assumed
    assert sampled_softmax_loss(**a) < base


def test_gradients_flow_and_zero_weight_rows_do_not_count():
    a = make(4)
    a["query"].requires_grad_(True)
    a["weight"] = a["weight"].clone()
    a["weight"][2] = 0.0
    sampled_softmax_loss(**a).backward()
    assert a["query"].grad[2].abs().sum() == 0 and a["query"].grad[0].abs().sum() > 0


def test_repeated_items_count_once():
    """A popular item repeated in the batch must not weigh more than once in another row's denominator."""
    a = make(5)
    a["cand_item"] = torch.tensor([10, 11, 12, 12, 12, 13, 14, 15])
    a["cand_user"] = torch.arange(8)
    a["query_user"] = torch.arange(8)
    a["cand"] = a["cand"].clone()
    a["cand"][3] = a["cand"][4] = a["cand"][2]  # the same item embeds the same
    once = dict(a, query=a["query"][:2], target=a["target"][:2], weight=a["weight"][:2], query_user=a["query_user"][:2])
    dedup = dict(once, cand=a["cand"][[0, 1, 2, 5, 6, 7]], cand_item=a["cand_item"][[0, 1, 2, 5, 6, 7]],
                 cand_user=a["cand_user"][[0, 1, 2, 5, 6, 7]], cand_log_q=a["cand_log_q"][[0, 1, 2, 5, 6, 7]])
    assert torch.allclose(sampled_softmax_loss(**once), sampled_softmax_loss(**dedup))
    assert torch.allclose(sampled_softmax_loss(**a), torch.tensor(reference(**a), dtype=torch.float64))


def test_sorted_join_mask_equals_the_dense_product():
    from retrieval.losses import _negatives_of_users_positives

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        users = torch.randint(0, 10, (64,), generator=g)
        items = torch.randint(0, 40, (64,), generator=g)
        negs = torch.randint(0, 40, (50,), generator=g)
        dense = ((users[:, None] == users[None, :]).float() @ (items[:, None] == negs[None, :]).float()) > 0
        r, n = _negatives_of_users_positives(users, items, users, negs)
        got = torch.zeros_like(dense)
        got[r, n] = True
        assert torch.equal(dense, got)


def test_interest_scores_are_the_best_interest():
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(5, 3, 4, generator=g), torch.randn(7, 4, generator=g)
    want = torch.tensor([[max(float(q[r, k] @ c[j]) for k in range(3)) for j in range(7)] for r in range(5)])
    assert torch.allclose(interest_scores(q, c), want, atol=1e-6)
    assert torch.allclose(interest_scores(q[:, 0], c), q[:, 0] @ c.T)


def test_interest_gradients_are_the_dense_maxs():
    """The best-interest scores' own backward gives autograd's gradients through a max over [R, K, C]."""
    g = torch.Generator().manual_seed(1)
    q, c = torch.randn(6, 3, 5, generator=g, dtype=torch.float64), torch.randn(9, 5, generator=g, dtype=torch.float64)
    w = torch.randn(6, 9, generator=g, dtype=torch.float64)
    q1, c1, q2, c2 = (t.clone().requires_grad_(True) for t in (q, c, q, c))
    (interest_scores(q1, c1) * w).sum().backward()
    ((q2 @ c2.T).max(dim=1).values * w).sum().backward()  # q2 @ c2.T: [6, 3, 9]
    assert torch.allclose(q1.grad, q2.grad) and torch.allclose(c1.grad, c2.grad)
    assert q1.grad.abs().sum(2).ne(0).sum() > 6  # more than one interest of a row gets gradient
    q[0] = q[0, :1]  # a user without history: every interest the same, every score a tie
    q1, c1 = q.clone().requires_grad_(True), c.clone().requires_grad_(True)
    (interest_scores(q1, c1) * w).sum().backward()
    one = q[0, 0].clone().requires_grad_(True)
    ((one @ c.T) * w[0]).sum().backward()
    # Each score's gradient goes to one interest (which one, between equal vectors, is up to rounding in the
    # products): together they are the one vector's, never counted twice.
    assert torch.allclose(q1.grad[0].sum(0), one.grad)


def test_matches_reference_with_interests():
    """K user vectors per row: every column's logit is its best interest's, masking and logQ as before."""
    for seed in range(3):
        a = make(seed, R=6)
        g = torch.Generator().manual_seed(seed)
        a["query"] = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
        loss = sampled_softmax_loss(**a)
        assert torch.allclose(loss, torch.tensor(reference(**a), dtype=torch.float64))
        assert not torch.allclose(loss, sampled_softmax_loss(**dict(a, query=a["query"][:, 0])))


def masked_logits(g: torch.Generator, R: int, C: int, dtype: torch.dtype, scale: float) -> tuple:
    """[R, C] random logits, a fifth of them masked (-inf), and [R] target columns, which are never masked."""
    logits = torch.randn(R, C, generator=g, dtype=dtype) * scale
    logits[torch.rand(R, C, generator=g) < 0.2] = float("-inf")
    target = torch.randint(0, C, (R,), generator=g)
    logits[torch.arange(R), target] = torch.randn(R, generator=g, dtype=dtype)
    return logits, target


def test_sparse_bonus_equals_the_dense_one():
    """bonus_nll reads only the bonus's few entries and gives the loss, and the bonus's gradient, of adding it to
    every logit: masked columns among them, large bonuses, rows without any, and a bonus on the target."""
    g = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        R, C = 12, 30
        logits, target = masked_logits(g, R, C, dtype, scale=4)
        weight = torch.rand(R, generator=g, dtype=dtype) + 0.1
        dense = torch.zeros(R, C, dtype=dtype)
        pick = torch.rand(R, C, generator=g) < 0.15
        pick[3] = False  # a row without any
        pick[0, target[0]] = pick[1, target[1]] = True  # on the target
        dense[pick] = torch.rand(int(pick.sum()), generator=g, dtype=dtype) * 3
        dense[2, pick[2].nonzero()[:1, 0]] = 60.0  # exp(60) overflows float32 when taken directly
        scale = torch.tensor(1.3, dtype=dtype, requires_grad=True)
        want = softmax_nll(logits + scale * dense, target, weight)
        (want_grad,) = torch.autograd.grad(want, scale)
        at = pick.nonzero(as_tuple=True)
        got = bonus_nll(logits, torch.logsumexp(logits, 1), target, weight, at, scale * dense[at])
        (got_grad,) = torch.autograd.grad(got, scale)
        got, want = got.detach(), want.detach()
        assert torch.isfinite(got) and abs(float(got - want)) < tol * max(1.0, abs(float(want)))
        assert abs(float(got_grad - want_grad)) < tol * max(1.0, abs(float(want_grad)))
    no_bonus = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert torch.allclose(bonus_nll(logits, torch.logsumexp(logits, 1), target, weight, no_bonus, torch.zeros(0)),
                          softmax_nll(logits, target, weight))


def test_matches_are_every_equal_pair():
    g = torch.Generator().manual_seed(0)
    for n in (0, 1, 30):
        query, keys = torch.randint(0, 8, (n,), generator=g), torch.randint(0, 8, (25,), generator=g)
        r, j = matches(query, keys)
        want = {(a, b) for a in range(n) for b in range(25) if query[a] == keys[b]}
        assert set(zip(r.tolist(), j.tolist(), strict=True)) == want and len(r) == len(want)


def test_column_bias_is_shared_by_rows_and_heads():
    """The bias of all rows, indexed at a subset, is the subset's own: a head may compute its rows alone."""
    a = make(3)
    cand = Candidates(None, a["cand_item"], a["cand_log_q"], a["cand_user"])
    neg = Candidates(None, a["neg_item"], a["neg_log_q"])
    full = column_bias(a["target"], a["query_user"], cand, neg, torch.float64)
    rows = torch.tensor([1, 4, 6])
    assert torch.equal(full[rows], column_bias(rows, a["query_user"][rows], cand, neg, torch.float64))
    assert torch.isinf(full).sum() > 0 and torch.isfinite(full[torch.arange(8), a["target"]]).all()


def test_fused_nll_matches_log_softmax_in_value_lse_and_gradient():
    """softmax_nll's backward reads the saved probabilities; the reference is autograd through log_softmax. A
    target far below its row's maximum (its probability under float32's smallest normal) keeps an exact loss."""
    g = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        R, C = 16, 40
        logits, target = masked_logits(g, R, C, dtype, scale=3)
        logits[5, target[5]] = -150.0  # exp(-150 - max) is 0 in float32
        weight = torch.rand(R, generator=g, dtype=dtype)
        weight[3] = 0.0
        x = logits.clone().requires_grad_(True)
        y = logits.clone().requires_grad_(True)
        got, lse = softmax_nll_lse(x, target, weight)
        want = -(y.log_softmax(1)[torch.arange(R), target] * weight).sum() / weight.sum()
        got.backward()
        want.backward()
        assert torch.isfinite(got) and abs(float((got - want).detach())) < tol * abs(float(want.detach()))
        assert torch.allclose(lse, torch.logsumexp(logits, 1), rtol=tol)
        assert torch.allclose(x.grad, y.grad, atol=tol) and x.grad[3].abs().sum() == 0
