"""The served answer against brute force over the whole catalogue on seeded vectors."""

from __future__ import annotations

import numpy as np

from index.faiss_index import build_index
from retrieval.answer import (
    isin_few,
    merge_answer,
    merge_history,
    merge_interests,
    search_width,
    served_answer,
)


def test_isin_few_matches_numpy_isin():
    rng = np.random.default_rng(5)
    for n_members in (0, 1, 3, 40):
        values = rng.integers(-1, 60, 200)  # -1: a search's empty slot
        members = rng.choice(60, n_members, replace=False)
        assert np.array_equal(isin_few(values, members), np.isin(values, members))


def test_merge_history_is_the_exact_top_k_of_the_full_scores():
    """Search results with history items re-scored = the brute-force top k of inner product + repeat term."""
    rng = np.random.default_rng(3)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    index = build_index(items, "Flat")
    for _ in range(20):
        u = rng.normal(size=(1, 8)).astype(np.float32)
        hist = rng.choice(300, rng.integers(0, 15), replace=False)
        full = items @ u[0]
        full[hist] += rng.uniform(0, 3, len(hist)).astype(np.float32)  # the repeat term
        k = 10
        s, r = index.search(u, k + len(hist))
        rows, scores = merge_history(r[0], s[0], hist, full[hist], k)
        want = np.argsort(-full, kind="stable")[:k]
        assert np.allclose(scores, full[want], atol=1e-5) and set(rows) == set(want)


def test_merge_interests_is_the_exact_top_of_the_best_interest():
    """K interest searches merged = the brute-force top M of each item's best interest score, each item once."""
    rng = np.random.default_rng(5)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    index = build_index(items, "Flat")
    for K in (1, 2, 4):
        for _ in range(10):
            u = rng.normal(size=(K, 8)).astype(np.float32)
            s, r = index.search(u, 25)
            rows, scores = merge_interests(r, s)
            best = (items @ u.T).max(1)  # [300]
            want = np.argsort(-best, kind="stable")[:25]
            assert len(set(rows.tolist())) == len(rows) >= 25  # each item once, at least the top 25
            assert np.allclose(scores[:25], best[want], atol=1e-5) and set(rows[:25]) == set(want)
            assert (np.diff(scores) <= 0).all()
    r = np.array([[3, 1, -1], [1, 2, -1]])
    rows, scores = merge_interests(r, np.array([[0.9, 0.5, -np.inf], [0.7, 0.6, -np.inf]], np.float32))
    assert rows.tolist() == [3, 1, 2] and np.allclose(scores, [0.9, 0.7, 0.6])  # -1 (none) dropped


def test_merge_answer_is_the_exact_top_k_over_interests_and_history():
    """K interest searches + history items with their repeat term = the brute-force top k of the full score."""
    rng = np.random.default_rng(8)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    index = build_index(items, "Flat")
    for K in (1, 3):
        for _ in range(10):
            u = rng.normal(size=(K, 8)).astype(np.float32)
            hist = rng.choice(300, rng.integers(0, 12), replace=False)
            full = (items @ u.T).max(1)  # [300] best interest
            full[hist] += rng.uniform(0, 3, len(hist)).astype(np.float32)
            k = 15
            s, r = index.search(u, k + len(hist))
            rows, scores = merge_answer(r, s, hist, full[hist], k)
            want = np.argsort(-full, kind="stable")[:k]
            assert np.allclose(scores, full[want], atol=1e-5) and set(rows) == set(want)


def test_served_answer_excludes_and_stays_exact():
    """With purchases excluded, the answer is the brute-force top k of the full score over the other items."""
    rng = np.random.default_rng(11)
    items = rng.normal(size=(200, 8)).astype(np.float32)
    index = build_index(items, "Flat")
    for K in (1, 2):
        for _ in range(10):
            u = rng.normal(size=(K, 8)).astype(np.float32)
            hist = rng.choice(200, rng.integers(0, 10), replace=False)
            bought = rng.choice(200, rng.integers(0, 10), replace=False)
            full = (items @ u.T).max(1)
            full[hist] += rng.uniform(0, 3, len(hist)).astype(np.float32)
            k = 12
            s, r = index.search(u, search_width(k, len(hist), len(bought), len(items)))
            rows, scores = served_answer(r, s, hist, full[hist], k, bought)
            allowed = np.setdiff1d(np.arange(200), bought)
            want = allowed[np.argsort(-full[allowed], kind="stable")[:k]]
            assert len(rows) == k and not set(rows) & set(bought)
            assert np.allclose(scores, full[want], atol=1e-5) and set(rows) == set(want)
