"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_corpus

from retrieval import evaluate as E
from retrieval.corpus import EvalSet
from retrieval.scorers import feature_popularity_scorer


def test_recall_ndcg_and_bootstrap_exact():
    ranks = [np.array([0, 5]), np.array([500]), np.array([], np.int64)]
    r = E.recall(ranks, 1)
    assert r[0] == 0.5 and r[1] == 0.0 and np.isnan(r[2])
    assert E.recall(ranks, 10)[0] == 1.0
    n = E.ndcg(ranks, 10)
    want = (1 + 1 / np.log2(7)) / (1 + 1 / np.log2(3))
    assert np.isclose(n[0], want) and n[1] == 0.0
    mean, lo, hi, users = E.bootstrap(np.array([0.0, 1.0, np.nan, 1.0, 0.0]))
    assert mean == 0.5 and users == 4 and 0.0 <= lo <= 0.5 <= hi <= 1.0


def test_rank_targets_with_a_known_scorer():
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [0.4, 0.3, 0.2, 0.1]])
    es = EvalSet(users=np.array([0, 1]), end=np.array([0, 0]), now=0,
                 conversions=[np.array([2, 0]), np.array([3])], engagement=[np.array([1]), np.array([], np.int64)])
    pu = E.rank_targets(lambda i, es: scores[i], es, n_items=4, kmax=3)
    assert pu.conv_ranks[0].tolist() == [1, 3] and pu.conv_ranks[1].tolist() == [3]  # 3 = not in the top 3
    assert pu.eng_ranks[0].tolist() == [0]
    assert pu.top100[0].tolist() == [1, 2, 3]


def test_slices_split_conversions_by_what_the_user_saw_before(tiny_world):
    """A scorer that ranks exactly the items a user engaged with before on top retrieves all of that slice."""
    c = tiny_corpus(tiny_world)
    es = c.eval_set(2)

    def seen_first(i, es):
        s = np.zeros((len(i), c.n_items), np.float32)
        for b, j in enumerate(i):
            s[b, c.event_row[c.user_start[es.users[j]]:es.end[j]]] = 1.0
        return s

    r = E.evaluate(seen_first, c, es)
    n_seen = [len(np.unique(c.event_row[c.user_start[u]:e])) for u, e in zip(es.users, es.end, strict=True)]
    assert max(n_seen) <= 100  # so every previously seen item fits in the top 100
    mean, _, _, users = r["engaged_before_conv_recall@100"]
    assert mean == 1.0 and users > 0
    assert r["new_to_user_conv_recall@100"][3] > 0  # some conversions are of items new to the user
    assert r["new_to_user_conv_recall@100"][0] < 1.0


def test_paired_difference_uses_users_scored_by_both():
    a = np.array([1.0, 0.5, np.nan, 0.0, 1.0])
    b = np.array([0.0, 0.5, 1.0, np.nan, 1.0])
    mean, lo, hi, users = E.paired_difference(a, b)
    assert users == 3 and np.isclose(mean, 1 / 3) and 0.0 <= lo <= mean <= hi <= 1.0
    mean, lo, hi, _ = E.paired_difference(np.full(50, 0.6), np.full(50, 0.5))  # the same gap for every user
    assert np.isclose(mean, 0.1) and np.isclose(lo, 0.1) and np.isclose(hi, 0.1)


def test_popularity_fallback_scores_unknown_users_as_the_service_does(tiny_world):
    """Users with no event before the window get conversion popularity before it; the others keep the scorer's."""
    c = tiny_corpus(tiny_world)
    es = c.eval_set(2)
    unknown = np.arange(len(es.users)) % 2 == 0
    end = np.where(unknown, c.user_start[es.users], es.end)  # half the users: no event before the window
    es = EvalSet(users=es.users, end=end, now=es.now, conversions=es.conversions, engagement=es.engagement)
    own = np.random.default_rng(0).random((len(es.users), c.n_items)).astype(np.float32)
    score = E.with_popularity_fallback(lambda i, es: own[i], c)
    i = np.arange(len(es.users))
    s = score(i, es)
    pop = c.item_counts(E.CONVERSION, es.now)
    assert pop.sum() > 0 and unknown.any() and (~unknown).any()
    assert (s[unknown] == pop).all()
    assert (s[~unknown] == own[~unknown]).all()
    r = E.evaluate(score, c, es)
    known = r["with_history_conv_recall@100"]
    assert known[3] == int(sum(len(es.conversions[j]) > 0 for j in np.flatnonzero(~unknown)))
    # Popularity is counted once per window: the same scorer on the earlier window counts before that one.
    val = c.eval_set(1)
    val = EvalSet(users=val.users, end=c.user_start[val.users], now=val.now, conversions=val.conversions,
                  engagement=val.engagement)  # everyone unknown
    before_val = c.item_counts(E.CONVERSION, val.now)
    assert val.now < es.now and not np.array_equal(before_val, pop)
    assert (score(np.arange(len(val.users)), val) == before_val).all()


def test_feature_popularity_baseline_against_a_per_event_reference(tiny_world):
    """category share x popularity + own items, recomputed event by event from the log."""
    c = tiny_corpus(tiny_world)
    es = c.eval_set(2)
    score = feature_popularity_scorer(c, es.now)
    got = score(np.arange(len(es.users)), es)  # [U, N]
    ev, cat = c.events, c.item_inputs["category"]
    eng, conv = np.zeros(c.n_items), np.zeros(c.n_items)
    for e in np.flatnonzero(ev.ts < es.now):
        eng[c.event_row[e]] += c.weight[e]
        conv[c.event_row[e]] += ev.kind[e] == E.CONVERSION
    pop = eng / eng.sum() + 0.5 * conv / conv.sum()
    checked = 0
    for j in range(0, len(es.users), 7):
        share, own = np.full(cat.max() + 1, 0.01), np.zeros(c.n_items)
        for e in range(c.user_start[es.users[j]], es.end[j]):
            share[cat[c.event_row[e]]] += c.weight[e]
            own[c.event_row[e]] += c.weight[e]
        assert np.allclose(got[j], share[cat] / share.sum() * pop + own, rtol=1e-5, atol=1e-9)
        checked += own.sum() > 0
    assert checked > 3  # users with events before the window, not only the empty-history case
    with pytest.raises(ValueError, match="no item feature 'colour'"):
        feature_popularity_scorer(c, es.now, "colour")


def test_evaluate_command_scores_a_checkpoint_against_baselines(trained, tmp_path, capsys):
    """`python -m retrieval.evaluate`: the model, its answers through an exact FAISS index (they must equal the
    exact scores'), popularity; with the users and targets behind each figure, as a table and as JSON."""
    import json

    out = E.main(["--checkpoint", str(trained), "--index", "Flat", "--json", str(tmp_path / "r.json")])
    printed = capsys.readouterr().out
    assert "conv_recall@100" in printed and "popularity (conversions)" in printed and "cold_item" in printed
    r = out["results"]
    assert set(r) == {"two-tower", "two-tower, Flat index", "popularity (conversions)", "popularity (engagement)"}
    for m in ("conv_recall@10", "conv_recall@100", "conv_ndcg@100", "eng_recall@100", "tail_conv_recall@100"):
        assert np.isclose(r["two-tower"][m][0], r["two-tower, Flat index"][m][0], atol=1e-9), m
    from retrieval.checkpoint import load_trained

    c = load_trained(trained).corpus(split=True)
    es = c.eval_set(2)
    assert out["users"] == len(es.users) and r["two-tower"]["conv_recall@100"][3] == len(es.users)
    assert out["targets"]["conv_recall@100"] == sum(len(t) for t in es.conversions)
    assert (out["targets"]["head_conv_recall@100"] + out["targets"]["torso_conv_recall@100"]
            + out["targets"]["tail_conv_recall@100"]) == out["targets"]["conv_recall@100"]
    gain = r["popularity (conversions)"]["two_tower_minus_this@100"][0]  # every user has a conversion: paired
    assert np.isclose(gain, r["two-tower"]["conv_recall@100"][0] - r["popularity (conversions)"]["conv_recall@100"][0])
    assert r["two-tower"]["two_tower_minus_this@100"][0] == 0.0
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["targets"] == out["targets"] and saved["results"]["two-tower"]["conv_recall@100"][0] == \
        r["two-tower"]["conv_recall@100"][0]


def test_evaluate_command_refuses_bad_input_in_one_line(trained, tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit, match="no such file"):
        E.main(["--checkpoint", str(tmp_path / "missing.ckpt")])
    with pytest.raises(SystemExit, match="'NotAFactory' cannot be built"):
        E.main(["--checkpoint", str(trained), "--index", "NotAFactory"])
    for bad in (["--baselines", "knn"], ["--max-users", "-1"], ["--max-users", "0"], ["--window", "future"]):
        with pytest.raises(SystemExit) as e:
            E.main(["--checkpoint", str(trained), *bad])
        assert e.value.code == 2 and bad[0] in capsys.readouterr().err  # argparse: usage and the option's name
