"""Served embeddings from a trained model: every catalogue item, every known user, or users at a given time.

Shared by the index job (index/build.py) and offline evaluation (retrieval/evaluate.py), so both embed a user
from the same history bag and an item from the same features.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from retrieval.corpus import Corpus
from retrieval.data import to_torch
from retrieval.model import TwoTowerModel


@torch.inference_mode()
def embed_items(model: TwoTowerModel, corpus: Corpus, batch_size: int = 8192, progress: bool = True) -> np.ndarray:
    """[N, D] float32 served embeddings of catalogue rows 0..N-1 (items without history too)."""
    n = corpus.n_items
    out = np.empty((n, model.embedding_dim), np.float32)
    for lo in tqdm(range(0, n, batch_size), desc="embed items", unit="batch", disable=not progress):
        rows = np.arange(lo, min(n, lo + batch_size))
        out[lo: lo + len(rows)] = model.embed_items(to_torch(corpus.item_batch(rows))).numpy()
    return out


@torch.inference_mode()
def embed_user_states(model: TwoTowerModel, corpus: Corpus, users: np.ndarray, end: np.ndarray,
                      now: np.ndarray) -> np.ndarray:
    """[B, D] float32 embeddings of user codes [B] from their history events [user_start, end) at time ``now``."""
    return model.embed_users(to_torch(corpus.user_batch(users, end, now))).numpy()


def embed_users(model: TwoTowerModel, corpus: Corpus, batch_size: int = 8192, progress: bool = True) -> np.ndarray:
    """[U, D] float32 embeddings of every user in the events, from their history up to the end of the log."""
    n = len(corpus.events.user_vocab)
    now = int(corpus.events.ts.max()) + 1
    out = np.empty((n, model.embedding_dim), np.float32)
    for lo in tqdm(range(0, n, batch_size), desc="embed users", unit="batch", disable=not progress):
        users = np.arange(lo, min(n, lo + batch_size))
        out[lo: lo + len(users)] = embed_user_states(model, corpus, users, corpus.user_end[users],
                                                     np.full(len(users), now, np.int64))
    return out
