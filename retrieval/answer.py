"""The served answer: a user's top k from the searches of their interest vectors, their history items (with the
repeat term) merged in exactly, their purchases left out when asked. numpy alone; the service and evaluation
both answer through :func:`served_answer`, so evaluation scores what the service returns."""

from __future__ import annotations

import numpy as np


def merge_interests(rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One answer from the searches of a user's K interest vectors: each item once, with its best interest's
    score (the model's score), best first. rows, scores: [K, M] search results (-1 = none).

    Exact for the top M: an item in the top M by best-interest score is in its best interest's top M.
    """
    if len(rows) == 1:
        return rows[0], scores[0]
    r, s = rows.ravel(), scores.ravel()
    keep = r >= 0
    order = np.argsort(-s[keep], kind="stable")
    r, s = r[keep][order], s[keep][order]
    _, first = np.unique(r, return_index=True)  # each item's first (best) occurrence
    first.sort()
    return r[first], s[first]


def isin_few(values: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``np.isin(values, members)`` for the few members of one request (a history, a user's purchases): sorting
    them and binary-searching costs less than np.isin's set-up at these sizes."""
    if len(members) == 0:
        return np.zeros(len(values), bool)
    m = np.sort(members)
    return m[np.searchsorted(m, values).clip(max=len(m) - 1)] == values


def merge_history(rows: np.ndarray, scores: np.ndarray, hist_rows: np.ndarray, hist_scores: np.ndarray,
                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of an inner-product search merged with the user's history items and their full scores.

    rows, scores: [M] search results, best first (-1 = none), M >= k + len(hist_rows) for an exact answer: the
    search scores of history items lack their repeat term, so they are dropped and the history's own scores
    (inner product + term) are taken instead. Returns (rows, scores), best first.
    """
    keep = (rows >= 0) & ~isin_few(rows, hist_rows)
    rows = np.concatenate([rows[keep], hist_rows])
    scores = np.concatenate([scores[keep], hist_scores])
    order = np.argsort(-scores, kind="stable")[:k]
    return rows[order], scores[order]


def merge_answer(rows: np.ndarray, scores: np.ndarray, hist_rows: np.ndarray, hist_scores: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """A user's served top ``k``: the searches of their K interest vectors (rows, scores: [K, M], M >= k +
    len(hist_rows)) merged (:func:`merge_interests`), then their history items with full scores merged in
    (:func:`merge_history`)."""
    return merge_history(*merge_interests(rows, scores), hist_rows, hist_scores, k)


def search_width(k: int, n_history: int, n_excluded: int, n_items: int) -> int:
    """How many results each interest's search must return for an exact top ``k`` after the history items
    (scored apart) and the excluded items are taken out."""
    return min(k + n_history + n_excluded, n_items)


def served_answer(rows: np.ndarray, scores: np.ndarray, hist_rows: np.ndarray, hist_scores: np.ndarray, k: int,
                  exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What the service answers from a user's K searches (rows, scores: [K, M], M = :func:`search_width`): the
    merged top ``k`` (:func:`merge_answer`) without the ``exclude`` rows (the user's purchases, when asked).
    The service and evaluation's index scorer both answer through this function."""
    rows, scores = merge_answer(rows, scores, hist_rows, hist_scores, rows.shape[1])
    if exclude is not None and len(exclude):
        keep = ~isin_few(rows, exclude)
        rows, scores = rows[keep], scores[keep]
    return rows[:k], scores[:k]
