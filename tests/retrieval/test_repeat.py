"""The repeat term's history lookups against brute-force loops, and the term's place in the served score."""

from __future__ import annotations

import numpy as np
import torch

from retrieval.repeat import history_affinity, history_entries, history_items


def bag(seed=0, B=5, L=9, n_items=12):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, n_items + 1, (B, L), generator=g)  # catalogue row + 1, 0 = padding
    rows[0] = 0  # a user with no history
    weights = torch.rand(B, L, generator=g) * (rows > 0)
    return rows, weights


def brute(rows, weights, cands):
    out = torch.zeros(rows.shape[0], len(cands))
    for b in range(rows.shape[0]):
        for n, c in enumerate(cands.tolist()):
            for j in range(rows.shape[1]):
                if int(rows[b, j]) > 0 and int(rows[b, j]) - 1 == c:
                    out[b, n] += weights[b, j]
    return out


def test_affinity_matches_brute_force_with_repeated_and_absent_candidates():
    for seed in range(4):
        rows, weights = bag(seed)
        cands = torch.tensor([3, 0, 3, 11, 7, 25, 0, 5])  # repeats, and row 25 no history can hold
        assert torch.allclose(history_affinity(rows, weights, cands), brute(rows, weights, cands), atol=1e-6)


def test_entries_are_the_dense_affinitys_non_zero_ones():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        rows = torch.randint(0, 9, (7, 6), generator=g)  # 0 = padding; items repeat within a bag
        weights = torch.rand(7, 6, generator=g) * (torch.rand(7, 6, generator=g) > 0.2)  # some events weigh 0
        cands = torch.randint(0, 10, (15,), generator=g)  # repeated and absent candidates
        dense = history_affinity(rows, weights, cands)
        r, c, v = history_entries(rows, weights, cands)
        at = dense.nonzero(as_tuple=True)
        assert torch.equal(r, at[0]) and torch.equal(c, at[1]) and torch.allclose(v, dense[at])


def test_dense_affinity_matches_brute_force_over_the_catalogue():
    rows, weights = bag(1)
    dense = history_affinity(rows, weights, torch.arange(12))
    assert dense.shape == (5, 12)
    assert torch.allclose(dense, brute(rows, weights, torch.arange(12)), atol=1e-6)
    assert (dense[0] == 0).all()
    assert torch.allclose(history_affinity(rows, weights, torch.arange(6)), dense[:, :6])  # a partial catalogue


def test_history_items_are_distinct_rows_with_summed_weights():
    rows, weights = bag(2)
    dense = brute(rows, weights, torch.arange(12)).numpy()
    offsets, all_items, all_w = history_items(rows.numpy(), weights.numpy())
    assert len(offsets) == len(rows) + 1 and offsets[1] == 0  # row 0 has no history
    for b in range(len(rows)):
        items, w = all_items[offsets[b]:offsets[b + 1]], all_w[offsets[b]:offsets[b + 1]]
        assert (np.diff(items) > 0).all()
        assert set(items.tolist()) == set(np.flatnonzero(dense[b] > 0).tolist())
        assert np.allclose(w, dense[b, items], atol=1e-6)


def test_the_term_learns_its_scale_without_steering_the_towers(tiny_world):
    """The scale gets a gradient; the towers' gradients are the same whatever the scale (it is fitted on their
    scores held fixed), so the term cannot make the towers push the user's own history away."""
    from helpers import tiny_corpus

    from retrieval.inference import to_torch
    from retrieval.model import TwoTowerModel

    c = tiny_corpus(tiny_world)
    torch.manual_seed(0)
    m = TwoTowerModel(c.item_vocab.spec(), {**c.user_vocab.spec(), "history_features": c.history_features},
                      embed_dim=8, hidden=[16], out_dim=6).eval()  # eval: no ID dropout, no frequency update
    pos = c.examples(0)[:128]
    b = c.example_batch(pos)
    neg = np.arange(40)
    b.update(neg=c.item_batch(neg), neg_item=neg, neg_log_q=np.full(40, np.log(40 / c.n_items), np.float32))
    b = to_torch(b)
    aff = history_affinity(b["user"]["hist_rows"], b["user"]["hist_weights"], torch.cat([b["pos_item"], b["neg_item"]]))
    assert (aff > 0).sum() > 10  # history items do appear among the candidates
    grads = []
    for raw in (0.0, 3.0):
        m.zero_grad()
        with torch.no_grad():
            m.net.repeat_raw.fill_(raw)
        m._step(b)["total"].backward()
        assert m.net.repeat_raw.grad.abs().sum() > 0
        grads.append({n: p.grad.to_dense().clone() for n, p in m.named_parameters()
                      if p.grad is not None and n != "net.repeat_raw"})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 4
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_the_step_reads_the_bonus_sparsely_with_the_dense_loss(tiny_world):
    """The model's loss, the repeat term read at the history entries alone (losses.bonus_nll), equals the same
    loss with the term added to every logit of the [R, B + N] softmax, in value and in the scale's gradient."""
    from helpers import tiny_corpus

    from retrieval.inference import to_torch
    from retrieval.losses import Candidates, softmax_logits, softmax_nll
    from retrieval.model import TwoTowerModel

    c = tiny_corpus(tiny_world)
    torch.manual_seed(0)
    m = TwoTowerModel(c.item_vocab.spec(), {**c.user_vocab.spec(), "history_features": c.history_features},
                      embed_dim=8, hidden=[16], out_dim=6).eval()
    b = c.example_batch(c.examples(0)[:128])
    neg = np.arange(40)
    b.update(neg=c.item_batch(neg), neg_item=neg, neg_log_q=np.full(40, np.log(40 / c.n_items), np.float32))
    b = to_torch(b)
    with torch.no_grad():
        m.net.repeat_raw.fill_(1.5)
    net = m.net
    u, p, n = net.user_tower(b["user"]), net.item_tower(b["pos"]), net.item_tower(b["neg"])
    aff = history_affinity(b["user"]["hist_rows"], b["user"]["hist_weights"], torch.cat([b["pos_item"], b["neg_item"]]))
    log_q = m.freq.log_prob(b["pos_item"])
    want = 0.0
    for i, head in enumerate(m.head_specs):  # the dense composition, head by head
        w = b["weight"] * m.event_mult[i][b["event"]]
        rows = torch.nonzero(w > 0).squeeze(1)
        logits = softmax_logits(net.query(u[head.name][rows]), rows, b["user_key"][rows],
                                Candidates(p[head.name], b["pos_item"], log_q, b["user_key"]),
                                Candidates(n[head.name], b["neg_item"], b["neg_log_q"]))
        bonus = net.repeat_term(aff[rows], head.name) / net.temperature
        want = want + head.weight * (softmax_nll(logits, rows, w[rows])
                                     + softmax_nll(logits.detach() + bonus, rows, w[rows]))
    got = m._step(b)["total"]
    assert torch.allclose(got, want, rtol=1e-5)
    (g_want,) = torch.autograd.grad(want, net.repeat_raw, retain_graph=True)
    (g_got,) = torch.autograd.grad(got, net.repeat_raw)
    assert torch.allclose(g_got, g_want, rtol=1e-4, atol=1e-7) and g_got.abs().sum() > 0
