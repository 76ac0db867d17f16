"""Heads from the config: the shorthand is today's two heads, exactly; a declared head set is checked whole."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.heads import Head, event_multipliers, heads_of, parse_heads, target_events

ROLES = {"conversions": {"purchase": 1.0}, "engagement": {"view": 0.5, "click": 1.0, "add_to_cart": 2.0}}
NONE = {"conversion_weight": None, "engagement_weight": None, "aux_weight": None}


def test_shorthand_is_todays_two_heads_weighting_each_event_as_before():
    """conversion head: w * where(is_conv, conversion_weight, engagement_weight); engagement head: w * ~is_conv,
    with weight aux_weight in the total; the formulas the loss used before heads existed."""
    hp = {"conversion_weight": 1.0, "engagement_weight": 0.3, "aux_weight": 0.7}
    heads = heads_of(hp)
    assert [h.name for h in heads] == ["conversion", "engagement"] and [h.weight for h in heads] == [1.0, 0.7]
    m = event_multipliers(heads, ROLES)  # events: purchase, view, click, add_to_cart
    is_conv = np.array([True, False, False, False])
    assert np.array_equal(m[0], np.where(is_conv, 1.0, 0.3).astype(np.float32))
    assert np.array_equal(m[1], (~is_conv).astype(np.float32))
    assert [h.name for h in heads_of({**hp, "aux_weight": 0.0})] == ["conversion"]
    assert [h.name for h in heads_of({})] == ["conversion", "engagement"]  # the defaults 1.0, 0.1, 0.5
    assert event_multipliers(heads_of({}), ROLES)[0].tolist() == pytest.approx([1.0, 0.1, 0.1, 0.1])


def test_declared_heads_resolve_events_and_roles():
    heads = parse_heads([
        {"name": "cart", "positives": {"add_to_cart": 1.0}, "weight": 0.3},
        {"name": "conversion", "positives": {"conversions": 1.0, "engagement": 0.1, "add_to_cart": 0.5}},
        {"name": "engagement", "positives": {"view": 1.0, "click": 1.0}, "weight": 0.5, "target": ["click"]},
    ], NONE)
    assert [h.name for h in heads] == ["conversion", "cart", "engagement"]  # the served head first
    m = event_multipliers(heads, ROLES)
    assert np.allclose(m, [[1.0, 0.1, 0.1, 0.5], [0, 0, 0, 1.0], [0, 1.0, 1.0, 0]])
    assert target_events(heads[0], ROLES) == ["purchase"]  # a head with conversions is calibrated on them
    assert target_events(heads[1], ROLES) == ["add_to_cart"]  # else on its positives
    assert target_events(heads[2], ROLES) == ["click"]  # or on what it names


@pytest.mark.parametrize("raw, shorthand, message", [
    ([{"name": "cart", "positives": {"add_to_cart": 1.0}}], NONE, "no head named 'conversion'"),
    ([{"name": "conversion", "positives": {"purchase": 1}}], {**NONE, "aux_weight": 0.5}, "heads replaces"),
    ([{"name": "conversion", "positives": {"purchase": 1}}, {"name": "conversion", "positives": {"view": 1}}],
     NONE, "is not a new name"),
    ([{"name": "Conv ersion", "positives": {"purchase": 1}}], NONE, "is not a new name"),
    ([{"name": "conversion", "positives": {"purchase": -1}}], NONE, "positives (conversion)"),
    ([{"name": "conversion", "positives": {"purchase": 0}}], NONE, "one multiplier above 0"),
    ([{"name": "conversion", "positives": {"purchase": 1}, "weight": float("nan")}], NONE, "weight (conversion)"),
    ([{"name": "conversion", "positives": {"purchase": 1}, "lr": 1}], NONE, "expected keys"),
    ([], NONE, "non-empty list"),
    (None, {"conversion_weight": 0.0, "engagement_weight": 0.0, "aux_weight": 0.5}, "learns nothing"),
])
def test_bad_heads_are_refused_naming_the_part(raw, shorthand, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_heads(raw, shorthand)


def test_an_event_outside_the_roles_is_named():
    heads = [Head("conversion", {"purchse": 1.0})]
    with pytest.raises(ValueError, match="'purchse' is neither an event of data.roles nor a role"):
        event_multipliers(heads, ROLES)
