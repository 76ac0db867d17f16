"""What the synthetic world's hidden traits predict: a ceiling for any model trained on its log.

The world (retrieval.synth) draws each view from a user's hidden interest mix, style and the items' popularity
and novelty, and each purchase from the view through a funnel of hidden fit, quality and price sensitivity. Given
those traits, the expected number of purchases of an item by a user in a time window is, up to a factor per
user, the Bayes-optimal ranking of the items the user will buy there; no log-trained model can rank better in
expectation. ``expected_purchases`` estimates it by Monte Carlo over views (category, time and candidate set
drawn as the generator draws them), with the choice and the funnel taken as probabilities rather than draws, so
the only noise is which candidate sets were drawn.

``views_only=True`` drops the funnel (fit, quality, price): the expected number of views, what the visible
traits alone predict.
"""

from __future__ import annotations

import numpy as np

from retrieval.synth import World, sigmoid


def user_traits(world: World, users: np.ndarray) -> dict[str, np.ndarray]:
    """Hidden traits of world users (0-based, user_id - 1): interest [2, U, C], style and fit [U, D],
    price_sens [U]. Users are drawn in the generator's chunks, so each chunk is drawn as it was then."""
    users = np.asarray(users, np.int64)
    if len(users) and (users.min() < 0 or users.max() >= world.cfg.users):
        raise ValueError(f"user_traits: user indices must lie in [0, {world.cfg.users}); got "
                         f"{users.min()}..{users.max()}")
    chunk = world.cfg.chunk_users
    first = users // chunk * chunk  # [U] each user's chunk
    out = {"interest": np.empty((2, len(users), world.cfg.categories)),
           "style": np.empty((len(users), world.cfg.taste_dim), np.float32),
           "fit": np.empty((len(users), world.cfg.taste_dim), np.float32),
           "price_sens": np.empty(len(users), np.float32)}
    for lo in np.unique(first).tolist():
        u = world.users(lo, min(lo + chunk, world.cfg.users))
        dest = np.flatnonzero(first == lo)
        out["interest"][:, dest] = u["interest"][:, users[dest] - lo]
        for k in ("style", "fit", "price_sens"):
            out[k][dest] = u[k][users[dest] - lo]
    return out


def expected_purchases(world: World, users: np.ndarray, lo: int, hi: int, views: int = 2000, seed: int = 0,
                       views_only: bool = False, chunk: int = 32) -> np.ndarray:
    """[U, n_items] expected purchases (views, with views_only) of each world item per view of each user
    (0-based indices) in [lo, hi) seconds, from ``views`` Monte Carlo views per user."""
    if not lo < hi:
        raise ValueError(f"expected_purchases: empty window [{lo}, {hi})")
    cfg = world.cfg
    traits = user_traits(world, users)
    rng = np.random.default_rng(seed)
    n = cfg.items
    out = np.zeros((len(users), n))
    for a in range(0, len(users), chunk):
        b = min(a + chunk, len(users))
        v_user = np.repeat(np.arange(a, b), views)  # [V] rows of `traits`
        t = rng.uniform(lo, hi, size=len(v_user))
        # The session's mix: the first, or with drift (growing over the log) the second.
        drifted = rng.random(len(v_user)) < cfg.interest_drift * (t - cfg.t0) / world.span
        cum = np.cumsum(traits["interest"], 2)[drifted.astype(np.int64), v_user]  # [V, C]
        cat = np.minimum((cum < rng.random(len(v_user))[:, None]).sum(1), cfg.categories - 1)
        cand = world.sample_items(rng, cat, cfg.candidates)  # [V, K]
        style_aff, logit = world.view_logits(traits["style"][v_user], cand, t)
        top = logit.max(1, keepdims=True)
        p = np.exp(logit - np.where(np.isfinite(top), top, 0.0))  # a row with nothing launched is all 0
        p /= np.maximum(p.sum(1, keepdims=True), 1e-300)  # [V, K] the softmax the Gumbel-max draw follows
        if not views_only:
            _, _, click, cart, buy = world.funnel_logits(traits["fit"][v_user][:, None, :],
                                                         traits["price_sens"][v_user][:, None], cand, style_aff)
            p = p * sigmoid(click) * sigmoid(cart) * sigmoid(buy)
        flat = (v_user[:, None] - a) * n + cand  # [V, K] into the chunk's [b - a, n]
        out[a:b] = np.bincount(flat.ravel(), weights=p.ravel(), minlength=(b - a) * n).reshape(b - a, n)
    return out / views
