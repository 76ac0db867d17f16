"""Towers and the served vectors."""

from __future__ import annotations

import pytest
import torch

from retrieval.history import merge_repeats
from retrieval.model import TwoTowerModel
from retrieval.towers import InterestPooling

ITEMS = {"n_ids": 11, "features": [{"name": "cat", "kind": "categorical", "width": 4},
                                   {"name": "tags", "kind": "multi_hot", "width": 6},
                                   {"name": "price", "kind": "continuous", "width": 1},
                                   {"name": "vec", "kind": "dense", "width": 3}]}
USERS = {"n_ids": 6, "features": [{"name": "region", "kind": "hashed", "width": 9}]}


def item_batch(n=5):
    g = torch.Generator().manual_seed(0)
    return {"id": torch.arange(n) % 11, "cat": torch.randint(0, 4, (n,), generator=g),
            "tags": torch.randint(0, 6, (n, 3), generator=g), "price": torch.rand(n, 1, generator=g),
            "vec": torch.randn(n, 3, generator=g)}


def user_batch(n=4):
    g = torch.Generator().manual_seed(1)
    hist = torch.randint(0, 11, (n, 7), generator=g)
    return {"id": torch.arange(n), "region": torch.randint(0, 9, (n,), generator=g),
            "hist_items": hist, "hist_rows": hist, "hist_weights": torch.rand(n, 7, generator=g)}


def test_served_inner_product_is_temperature_times_training_logit():
    m = TwoTowerModel(ITEMS, USERS, embed_dim=8, hidden=[16], out_dim=6, temperature=0.1, item_bias=True).net.eval()
    x, u = item_batch(), user_batch()
    with torch.no_grad():
        served = m.embed_users(u) @ m.embed_items(x).T  # [4, 5]
        logits = m.query(m.user_tower(u)["conversion"]) @ m.item_tower(x)["conversion"].T
    assert m.embedding_dim == 7 and m.embed_items(x).shape == (5, 7)
    assert torch.allclose(served, 0.1 * logits, atol=1e-6)
    assert torch.allclose(m.item_tower(x)["conversion"][:, :6].norm(dim=1), torch.ones(5), atol=1e-5)


def test_new_item_embeds_from_features_alone():
    m = TwoTowerModel(ITEMS, USERS, embed_dim=8, hidden=[16], out_dim=6).net.eval()
    x = item_batch()
    x["id"] = torch.zeros_like(x["id"])  # no learned id
    with torch.no_grad():
        e = m.embed_items(x)
        x2 = dict(x, cat=(x["cat"] + 1) % 4)
        assert not torch.allclose(e, m.embed_items(x2))  # features move the embedding
        assert torch.isfinite(e).all()


def test_history_bag_changes_the_user_and_padding_does_not():
    m = TwoTowerModel(ITEMS, USERS, embed_dim=8, hidden=[16], out_dim=6, item_bias=False).net.eval()
    u = user_batch()
    with torch.no_grad():
        base = m.embed_users(u)
        padded = dict(u, hist_items=torch.cat([u["hist_items"], torch.zeros(4, 3, dtype=torch.long)], 1),
                      hist_weights=torch.cat([u["hist_weights"], torch.ones(4, 3)], 1))
        assert torch.allclose(base, m.embed_users(padded), atol=1e-6)  # id 0 is padding, weight ignored
        other = dict(u, hist_items=(u["hist_items"] % 10) + 1)
        assert not torch.allclose(base, m.embed_users(other))


def test_sparse_and_dense_parameters_go_to_their_optimizers():
    m = TwoTowerModel(ITEMS, USERS, embed_dim=8, hidden=[16], out_dim=6, user_ids=True)
    sparse, dense = m.configure_optimizers()
    assert isinstance(sparse, torch.optim.SparseAdam) and isinstance(dense, torch.optim.Adam)
    n_sparse = sum(p.numel() for g in sparse.param_groups for p in g["params"])
    n_all = sum(p.numel() for p in m.parameters())
    n_dense = sum(p.numel() for g in dense.param_groups for p in g["params"])
    assert n_sparse + n_dense == n_all  # each parameter once (the shared item table too)
    assert n_sparse >= 11 * 8 + 6 * 8 + 4 * 8 + 6 * 8 + 9 * 8


def test_history_features_speak_for_items_without_a_learned_id():
    """A history of new items (id 0) still moves the user through their features, read from the item tower's table."""
    users = dict(USERS, history_features=["cat"])
    lm = TwoTowerModel(ITEMS, users, embed_dim=8, hidden=[16], out_dim=6, item_bias=False).eval()
    m = lm.net
    assert m.user_tower.history_features["cat"] is m.item_tower.embedder.tables["cat"]  # shared, not copied
    u = user_batch()
    new = dict(u, hist_items=torch.zeros_like(u["hist_items"]), hist_cat=torch.full((4, 7), 2))
    with torch.no_grad():
        empty = m.embed_users(dict(new, hist_cat=torch.zeros(4, 7, dtype=torch.long)))
        assert not torch.allclose(empty, m.embed_users(new))  # category 2 says something
        assert not torch.allclose(m.embed_users(new), m.embed_users(dict(new, hist_cat=torch.full((4, 7), 3))))
    sparse, dense = lm.configure_optimizers()
    ids = [id(p) for g in (*sparse.param_groups, *dense.param_groups) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(lm.parameters()))  # the shared table is optimised once


def test_interests_with_zero_keys_are_the_mean_bag():
    """InterestPooling with zero keys weighs the history as the one-vector tower does: K equal vectors, each the
    single-vector answer of the same weights."""
    users = dict(USERS, history_features=["cat"])
    m = TwoTowerModel(ITEMS, users, embed_dim=8, hidden=[16], out_dim=6, interests=3).net.eval()
    u = user_batch()
    u["hist_cat"] = torch.randint(0, 4, (4, 7)) * (u["hist_rows"] > 0)  # some missing (0); padding has no codes
    with torch.no_grad():
        m.user_tower.pooling.key.weight.zero_()
        multi = m.embed_users(u)  # [4, 3, 7]
        pooling, m.user_tower.pooling = m.user_tower.pooling, None
        single = m.embed_users(u)  # [4, 7]
        m.user_tower.pooling = pooling
    assert multi.shape == (4, 3, 7) and single.shape == (4, 7)
    assert torch.allclose(multi, single[:, None].expand(-1, 3, -1), atol=1e-5)


def test_interests_differ_ignore_padding_and_survive_an_empty_history():
    m = TwoTowerModel(ITEMS, USERS, embed_dim=8, hidden=[16], out_dim=6, interests=4, item_bias=False).net.eval()
    u = user_batch()
    pad = torch.zeros(4, 3, dtype=torch.long)
    padded = dict(u, hist_items=torch.cat([u["hist_items"], pad], 1), hist_rows=torch.cat([u["hist_rows"], pad], 1),
                  hist_weights=torch.cat([u["hist_weights"], torch.ones(4, 3)], 1))
    empty = dict(u, hist_items=torch.zeros(4, 7, dtype=torch.long), hist_rows=torch.zeros(4, 7, dtype=torch.long))
    with torch.no_grad():
        e = m.embed_users(u)
        assert e.shape == (4, 4, 6) and torch.allclose(e.norm(dim=-1), torch.ones(4, 4), atol=1e-5)
        assert (e[:, 0] - e[:, 1]).norm(dim=-1).min() > 1e-4  # random keys: the interests start (a little) apart
        assert torch.allclose(e, m.embed_users(padded), atol=1e-6)
        assert torch.isfinite(m.embed_users(empty)).all()
    # An item scores its best interest's inner product, in training and in serving alike.
    x = item_batch()
    with torch.no_grad():
        vecs = m.embed_items(x)
        scores = m.served_scores(m.embed_users(u), vecs, dict(u, hist_rows=torch.zeros_like(u["hist_rows"])))
    assert torch.allclose(scores, torch.einsum("bkd,nd->bkn", e, vecs).amax(1), atol=1e-6)


def test_interests_need_a_history_bag_and_at_least_one():
    import pytest

    from retrieval.towers import Tower

    with pytest.raises(ValueError, match="interests"):
        Tower(USERS["features"], 8, [16], 6, ["conversion"], interests=2)
    with pytest.raises(ValueError, match="interests must be 1 or more"):
        TwoTowerModel(ITEMS, USERS, interests=0)


@pytest.mark.parametrize("interests", [1, 3])
def test_a_bag_with_repeats_merged_gives_the_same_user(interests):
    """merge_repeats keeps one slot per item with the summed weight: the mean bag and the interests' attention
    weigh an item by that sum, so the user is the same from the narrower bag."""
    m = TwoTowerModel(ITEMS, USERS, embed_dim=8, hidden=[16], out_dim=6, interests=interests).net.eval()
    g = torch.Generator().manual_seed(2)
    hist = torch.randint(0, 5, (4, 12), generator=g)  # 12 events over 4 items: many repeats, some padding
    u = {"id": torch.arange(4), "region": torch.randint(0, 9, (4,), generator=g),
         "hist_items": hist, "hist_rows": hist, "hist_weights": torch.rand(4, 12, generator=g)}
    items, weights = merge_repeats(hist.numpy(), u["hist_weights"].numpy())
    assert items.shape[1] <= 4 < hist.shape[1]
    merged = dict(u, hist_items=torch.from_numpy(items), hist_rows=torch.from_numpy(items),
                  hist_weights=torch.from_numpy(weights))
    with torch.no_grad():
        assert torch.allclose(m.embed_users(u), m.embed_users(merged), atol=1e-5)


def concatenated_pooling(key, weights, valid, embs):
    """The pooling as autograd composes it over the concatenated history: the reference for _PooledBags."""
    hist = torch.cat(embs, dim=2)  # [B, L, T * E]
    logits = (hist @ key.t()).transpose(1, 2) + torch.log(weights.clamp_min(1e-12))[:, None, :]
    logits = logits.masked_fill(~(valid & (weights > 0))[:, None, :], float("-inf"))
    attn = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)
    return attn, attn @ hist


def test_pooled_bags_match_the_concatenated_pooling_in_value_and_gradient():
    torch.manual_seed(0)
    b, length, e, k = 5, 9, 4, 3
    embs = [torch.randn(b, length, e, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    key = torch.randn(k, 3 * e, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(b, length, dtype=torch.float64) + 0.1
    valid = torch.rand(b, length) > 0.3
    valid[2] = False  # a user with nothing to attend to: attention and bags 0, gradients 0
    weights[3, :4] = 0  # weight 0 takes no share either
    pooling = InterestPooling(3 * e, k).double()
    with torch.no_grad():
        pooling.key.weight.copy_(key)
    got = pooling(embs, weights, valid)
    want = concatenated_pooling(key, weights, valid, embs)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g.double(), w, atol=1e-10)
    assert (got[0][2] == 0).all() and (got[1][2] == 0).all()
    # Both outputs feed the loss (the known-code share reads the attention), as in the tower.
    probe_a, probe_p = torch.randn_like(want[0]), torch.randn_like(want[1])
    grads = torch.autograd.grad(((got[0] * probe_a).sum() + (got[1] * probe_p).sum()), [pooling.key.weight, *embs])
    ref = torch.autograd.grad(((want[0] * probe_a).sum() + (want[1] * probe_p).sum()), [key, *embs])
    for g, r in zip(grads, ref, strict=True):
        assert torch.allclose(g.double(), r, atol=1e-10)
    assert (grads[1][2] == 0).all()
    # Only the pooled bags used (no gradient into the attention): still the reference's.
    g_only = torch.autograd.grad((pooling(embs, weights, valid)[1] * probe_p).sum(), embs[0])[0]
    r_only = torch.autograd.grad((concatenated_pooling(key, weights, valid, embs)[1] * probe_p).sum(), embs[0])[0]
    assert torch.allclose(g_only.double(), r_only, atol=1e-10)
