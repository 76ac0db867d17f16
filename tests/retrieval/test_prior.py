"""The prior on the user's mix over an item feature: its log shares, and its scores served by inner product."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import fit_args

from retrieval.checkpoint import load_trained
from retrieval.cli import main
from retrieval.losses import interest_scores
from retrieval.model import TwoTowerModel
from retrieval.prior import log_share

ITEMS = {"n_ids": 11, "features": [{"name": "cat", "kind": "categorical", "width": 4},
                                   {"name": "brand", "kind": "hashed", "width": 8},
                                   {"name": "price", "kind": "continuous", "width": 1}]}
USERS = {"n_ids": 6, "features": [], "history_features": ["cat", "brand"]}


def batches():
    g = torch.Generator().manual_seed(0)
    x = {"id": torch.arange(5) % 11, "cat": torch.tensor([0, 1, 2, 3, 1]),
         "brand": torch.randint(0, 8, (5,), generator=g), "price": torch.rand(5, 1, generator=g)}
    hist = torch.randint(1, 11, (4, 7), generator=g)
    u = {"id": torch.arange(4), "hist_items": hist, "hist_rows": hist, "hist_weights": torch.rand(4, 7, generator=g),
         "hist_cat": torch.randint(0, 4, (4, 7), generator=g), "hist_brand": torch.randint(0, 8, (4, 7), generator=g)}
    u["hist_cat"][3] = 0  # a user whose history has no known value: the uniform prior
    return x, u


def test_log_share_against_counting_by_hand():
    codes = torch.tensor([[1, 1, 2, 0, 3], [0, 0, 0, 0, 0]])
    w = torch.tensor([[1.0, 2.0, 0.5, 9.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    got = log_share(codes, w, 4, 0.1).numpy()
    counts = np.array([[0.0, 3.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])  # code 0 (missing) and weight 0 count nothing
    want = np.log((counts + 0.1) / (counts.sum(1, keepdims=True) + 0.4))
    assert np.allclose(got, want, atol=1e-6)
    assert np.allclose(np.exp(got).sum(1), 1.0, atol=1e-6)  # a distribution over the C values


@pytest.mark.parametrize("interests", [1, 3])
def test_served_inner_product_is_temperature_times_the_training_logit_with_the_prior(interests):
    m = TwoTowerModel(ITEMS, USERS, embed_dim=8, hidden=[16], out_dim=6, temperature=0.1, interests=interests,
                      prior_feature="cat", prior_smoothing=0.05).net.eval()
    x, u = batches()
    with torch.no_grad():
        m.prior_raw.copy_(torch.tensor([0.7]))
        users, items = m.embed_users(u), m.embed_items(x)
        assert m.embedding_dim == 6 + 1 + 4 and items.shape == (5, 11)
        served = interest_scores(users, items)  # [4, 5]
        towers = interest_scores(m.query(m.user_tower(u)["conversion"]), m.item_tower(x)["conversion"])
        logits = towers + 0.7 * m.prior_logits(u, x["cat"])  # what training scores
        assert torch.allclose(served, 0.1 * logits, atol=1e-5)
        # The prior is the user's smoothed share of weighted history on the item's category, by hand.
        w = (u["hist_weights"] * (u["hist_cat"] > 0)).numpy()
        counts = np.stack([np.bincount(c, weights=r, minlength=4) for c, r in zip(u["hist_cat"].numpy(), w, strict=True)])
        share = (counts + 0.05) / (counts.sum(1, keepdims=True) + 0.2)
        assert np.allclose((served - 0.1 * towers).numpy(), 0.1 * 0.7 * np.log(share)[:, x["cat"].numpy()], atol=1e-5)
        assert torch.allclose(served[3] - 0.1 * towers[3], torch.full((5,), 0.07 * np.log(0.25)), atol=1e-5)


def test_the_prior_weight_learns_from_the_loss(tiny_world, tmp_path):
    """A fit with the prior on the tiny world moves its weight off 0, and its checkpoint serves the prior."""
    main(["fit", *fit_args(tiny_world, tmp_path, "--trainer.max_epochs=1", "--model.prior_feature=category")])
    trained = load_trained(tmp_path / "checkpoints" / "last.ckpt")
    net = trained.model
    assert net.prior_feature == "category" and abs(net.prior_raw[0].item()) > 1e-3
    assert net.embedding_dim == net.out_dim + 1 + net.prior_width


@pytest.mark.parametrize("name, match", [("price", "not a categorical or hashed item feature"),
                                         ("colour", "not a categorical or hashed item feature"),
                                         ("brand", "not in the user's history bags")])
def test_a_prior_on_a_feature_it_cannot_read_is_refused_naming_it(name, match):
    users = dict(USERS, history_features=["cat"])
    with pytest.raises(ValueError, match=match) as e:
        TwoTowerModel(ITEMS, users, embed_dim=8, hidden=[16], out_dim=6, prior_feature=name)
    assert repr(name) in str(e.value)
