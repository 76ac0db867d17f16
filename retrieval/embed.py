"""Served embeddings from a trained model: every catalogue item, every known user, or users at a given time.

Shared by the index job (index/build.py) and offline evaluation (retrieval/evaluate.py), so both embed a user
from the same history bag and an item from the same features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from retrieval.corpus import Corpus
from retrieval.heads import SERVED
from retrieval.inference import TwoTower, to_torch
from retrieval.repeat import history_items


def embed_items(model: TwoTower, corpus: Corpus, batch_size: int = 8192, progress: bool = True,
                head: str = SERVED) -> np.ndarray:
    """[N, D] float32 served embeddings of catalogue rows 0..N-1 (items without history too), of one head."""
    return embed_items_heads(model, corpus, batch_size, progress, [head])[head]


@torch.inference_mode()
def embed_items_heads(model: TwoTower, corpus: Corpus, batch_size: int = 8192, progress: bool = True,
                      heads: list[str] | None = None) -> dict[str, np.ndarray]:
    """{head: [N, D]} served item embeddings of every head (or of ``heads``), from one run of the tower."""
    heads = model.heads if heads is None else heads
    n = corpus.n_items
    out = {h: np.empty((n, model.embedding_dim), np.float32) for h in heads}
    for lo in tqdm(range(0, n, batch_size), desc="embed items", unit="batch", disable=not progress):
        rows = np.arange(lo, min(n, lo + batch_size))
        x = to_torch(corpus.item_batch(rows))
        raw = model.item_tower(x)
        for h in heads:
            out[h][lo: lo + len(rows)] = model.served_item(raw[h], x).numpy()
    return out


@torch.inference_mode()
def user_state_scores(model: TwoTower, corpus: Corpus, users: np.ndarray, end: np.ndarray, now: np.ndarray,
                      items: np.ndarray, head: str = SERVED) -> np.ndarray:
    """[B, N] full served scores (inner product + repeat term) of user states against item vectors [N, D], of
    one head."""
    x = to_torch(corpus.user_batch(users, end, now))
    return model.served_scores(model.embed_users(x, head), torch.from_numpy(items), x, head).numpy()


@dataclass
class UserHistory:
    """Per user, the distinct items of their history bag and their full served scores (CSR)."""

    offsets: np.ndarray  # [U + 1] int64
    rows: np.ndarray  # [H] int32 catalogue rows
    scores: np.ndarray  # [H] float32: inner product + repeat term

    def of(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[u], self.offsets[u + 1]
        return self.rows[lo:hi], self.scores[lo:hi]

    @staticmethod
    def concat(parts: list[UserHistory]) -> UserHistory:
        """The users of ``parts``, in order."""
        sizes = [np.diff(p.offsets) for p in parts]
        return UserHistory(np.concatenate([[0], np.cumsum(np.concatenate([[], *sizes]))]).astype(np.int64),
                           np.concatenate([np.zeros(0, np.int32), *(p.rows for p in parts)]),
                           np.concatenate([np.zeros(0, np.float32), *(p.scores for p in parts)]))


@torch.inference_mode()
def user_history(model: TwoTower, x: dict[str, np.ndarray], user_vecs: np.ndarray,
                 item_vecs: np.ndarray, head: str = SERVED) -> UserHistory:
    """The history items of a user batch ``x`` (corpus.user_batch) with their full scores against ``item_vecs``
    (one head's); none when the model has no repeat term (the index alone is then exact). user_vecs: [B, K, D]
    of the same batch and head (an item's inner product is its best interest's)."""
    if model.repeat_raw is None:
        return UserHistory(np.zeros(len(user_vecs) + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    offsets, rows, weights = history_items(x["hist_rows"], x["hist_weights"], merged=True)  # bag_inputs merged them
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))  # [H] the user of each history item
    inner = np.einsum("hd,hkd->hk", item_vecs[rows], user_vecs[owner]).max(1, initial=-np.inf)
    scores = inner + model.repeat_term(torch.from_numpy(weights), head).numpy()
    return UserHistory(offsets, rows.astype(np.int32), scores.astype(np.float32))


def states_from_inputs(model: TwoTower, x: dict[str, np.ndarray], item_vecs: np.ndarray) -> tuple[np.ndarray, UserHistory]:
    """Served (conversion) vectors [B, K, D] of a user batch ``x`` (corpus.user_batch or
    retrieval.live.LiveState.inputs; K interests, 1 for a single-vector model) and their history items with full
    scores (what the service merges into an index's answer). item_vecs: [N, D], or anything indexed by catalogue
    rows that gives them."""
    return states_from_inputs_heads(model, x, {SERVED: item_vecs})[SERVED]


def states_from_inputs_heads(model: TwoTower, x: dict[str, np.ndarray],
                             item_vecs: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, UserHistory]]:
    """:func:`states_from_inputs` of every head in ``item_vecs`` ({head: item vectors}), from one tower run."""
    b = len(x["hist_rows"])
    with torch.inference_mode():
        out = model.embed_users_heads(to_torch(x))
    vecs = {h: out[h].numpy().reshape(b, model.interests, -1) for h in item_vecs}
    return {h: (vecs[h], user_history(model, x, vecs[h], iv, h)) for h, iv in item_vecs.items()}


def user_states(model: TwoTower, corpus: Corpus, users: np.ndarray, end: np.ndarray, now: np.ndarray,
                item_vecs: np.ndarray) -> tuple[np.ndarray, UserHistory]:
    """:func:`states_from_inputs` of user codes [B] with history [user_start, end) at ``now``, from one history
    gather."""
    return states_from_inputs(model, corpus.user_batch(users, end, now), item_vecs)


def embed_users(model: TwoTower, corpus: Corpus, item_vecs: np.ndarray, batch_size: int = 8192,
                progress: bool = True) -> tuple[np.ndarray, UserHistory]:
    """[U, K, D] float32 served (conversion) embeddings of every user in the events (K interests), from their
    history up to the end of the log, and their history items with full scores against ``item_vecs`` (what the
    service merges into the index's answer)."""
    return embed_users_heads(model, corpus, {SERVED: item_vecs}, batch_size, progress)[SERVED]


def embed_users_heads(model: TwoTower, corpus: Corpus, item_vecs: dict[str, np.ndarray], batch_size: int = 8192,
                      progress: bool = True) -> dict[str, tuple[np.ndarray, UserHistory]]:
    """:func:`embed_users` of every head in ``item_vecs`` ({head: [N, D]}), from one run of the tower."""
    n = len(corpus.events.user_vocab)
    now = int(corpus.events.ts.max()) + 1
    out = {h: np.empty((n, model.interests, model.embedding_dim), np.float32) for h in item_vecs}
    parts: dict[str, list[UserHistory]] = {h: [] for h in item_vecs}
    for lo in tqdm(range(0, n, batch_size), desc="embed users", unit="batch", disable=not progress):
        users = np.arange(lo, min(n, lo + batch_size))
        x = corpus.user_batch(users, corpus.user_end[users], np.full(len(users), now, np.int64))
        for h, (vecs, hist) in states_from_inputs_heads(model, x, item_vecs).items():
            out[h][lo: lo + len(users)] = vecs
            parts[h].append(hist)
    return {h: (out[h], UserHistory.concat(parts[h])) for h in item_vecs}
