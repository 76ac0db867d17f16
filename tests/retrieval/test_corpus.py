"""The corpus: history bags read ids and item features of the same history events."""

from __future__ import annotations

import numpy as np
from helpers import tiny_corpus as corpus


def test_history_bags_carry_ids_and_features_of_the_same_events(tiny_world):
    c = corpus(tiny_world, length=20)
    assert c.history_features == [e["name"] for e in c.item_vocab.encoders if e["kind"] in ("categorical", "hashed")]
    assert c.history_features  # the tiny config has categorical item features
    users = np.arange(len(c.events.user_vocab))
    b = c.user_batch(users, c.user_end[users], np.full(len(users), c.events.ts.max() + 1))
    u = int(np.argmax(c.user_end - c.user_start))  # the user with the longest history
    last = slice(c.user_end[u] - 20, c.user_end[u])  # their last 20 events
    now = c.events.ts.max() + 1
    rows = c.event_row[last]
    w = c.weight[last] * np.exp2(-(now - c.events.ts[last]) / (c.history.half_life_days * 86_400))  # recency decay
    slots = b["hist_rows"][u] > 0
    got = b["hist_rows"][u][slots] - 1  # each distinct item once, with its events' summed weight
    assert sorted(got) == sorted(set(rows)) and len(set(rows)) < 20, "the longest history repeats items"
    assert np.allclose(b["hist_weights"][u][slots], [w[rows == r].sum() for r in got], atol=1e-5)
    assert (b["hist_items"][u][slots] == c.item_inputs["id"][got]).all()
    for name in c.history_features:
        assert (b[f"hist_{name}"][u][slots] == c.item_inputs[name][got]).all()
    # An item launched after training has no learned id but keeps its features in the bag.
    no_id = (b["hist_items"] == 0) & (b["hist_weights"] > 0)
    assert no_id.any(), "the tiny world has items launched after the training window"
    assert (b[f"hist_{c.history_features[0]}"][no_id] > 0).any()


def test_history_features_can_be_switched_off(tiny_world):
    c = corpus(tiny_world, item_features=False)
    assert c.history_features == []
    b = c.user_batch(np.array([0]), c.user_end[:1], np.array([c.events.ts.max() + 1]))
    assert not any(k.startswith("hist_") and k not in ("hist_items", "hist_weights", "hist_rows") for k in b)
