"""The index build job: checkpoint -> embeddings, FAISS index, fallbacks, manifest, in one artifact folder."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from index.artifact import (
    JOINT_INDEX,
    ArtifactError,
    Manifest,
    StagingFolder,
    head_column,
    head_index_file,
    sha256,
    write_manifest,
)
from index.calibrate import calibrate_heads
from index.faiss_index import (
    apply_search_params,
    build_index,
    check_factory,
    default_search_params,
    measure_recall,
)
from retrieval.checkpoint import load_trained
from retrieval.corpus import Corpus
from retrieval.embed import embed_items_heads, embed_users_heads
from retrieval.events import CONVERSION, ENGAGEMENT
from retrieval.heads import SERVED, heads_of, role_spec
from retrieval.live import stored_tails
from retrieval.utility import UtilityError, parse_utility

log = logging.getLogger(__name__)


def vectors_table(ids: pa.Array, vectors: np.ndarray, key: str) -> pa.Table:
    """id + fixed-size list vector column, without copying the vectors: [N, D], or [N, K, D] as K * D values."""
    flat = pa.array(vectors.reshape(-1), pa.float32())
    return pa.table({key: ids, "vector": pa.FixedSizeListArray.from_arrays(flat, int(np.prod(vectors.shape[1:])))})


def popularity(corpus: Corpus, top: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` catalogue rows by conversions, ties (items without any, too) by engagement, and their share of
    all conversions, best first."""
    counts = corpus.item_counts(CONVERSION)
    tie = np.where(counts > 0, 0, -corpus.item_counts(ENGAGEMENT))  # items with conversions keep catalogue order
    rows = np.lexsort((tie, -counts))[: min(top, corpus.n_items)]
    return rows, (counts[rows] / max(counts.sum(), 1)).astype(np.float32)


def input_columns(inputs: dict[str, np.ndarray], prefix: str = "in_") -> dict[str, pa.Array]:
    """Tower inputs ([N] or [N, W] arrays) as columns: a fixed-size list where an input is a row of values."""
    out = {}
    for k, v in inputs.items():
        flat = pa.array(np.ascontiguousarray(v).reshape(-1))
        out[prefix + k] = flat if v.ndim == 1 else pa.FixedSizeListArray.from_arrays(flat, int(np.prod(v.shape[1:])))
    return out


def list_column(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    """A list column from CSR offsets [U + 1] and values."""
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


def purchased_rows(corpus: Corpus) -> pa.Array:
    """Per user code, the distinct catalogue rows they converted on (a list column)."""
    ev = corpus.events
    conv = np.flatnonzero(ev.kind == CONVERSION)
    pairs = np.unique(np.stack([ev.user[conv].astype(np.int64), corpus.event_row[conv]]), axis=1)
    return list_column(np.searchsorted(pairs[0], np.arange(len(ev.user_vocab) + 1)), pairs[1].astype(np.int32))


def joint_index(head_items: dict[str, np.ndarray], interests: int, factory: str, use_gpu: bool | None,
                seed: int) -> faiss.Index | None:
    """The heads' item vectors side by side, [N, H * D] in head order, indexed like each head's: a utility on raw
    scores with one user vector per head is then one search (serve/store.py). None with one head, or with several
    interest vectors (a sum over heads of each head's best interest is no one inner product)."""
    if len(head_items) < 2 or interests != 1:
        return None
    return build_index(np.hstack(list(head_items.values())), factory, use_gpu=use_gpu, seed=seed)


def build(checkpoint: str | Path, out: str | Path, factory: str = "Flat", events: str | None = None,
          items: str | None = None, users: str | None = None, recall_k: int = 100, recall_users: int = 1000,
          batch_size: int = 8192, use_gpu: bool | None = None, progress: bool = True, seed: int = 0,
          presets: dict[str, str] | None = None, calibration_users: int = 2000) -> Manifest:
    """Build a complete artifact folder at ``out`` (absent if anything fails). presets: named utilities
    ({name: "head:weight,..."}) the service answers as ``utility=name``."""
    t0 = time.perf_counter()
    trained = load_trained(checkpoint)
    check_factory(factory, trained.model.embedding_dim)  # fail before the embedding, not after it
    heads = heads_of(trained.hparams)
    utility_presets = {}
    for name, spec in (presets or {}).items():
        try:
            utility_presets[name] = parse_utility(spec, [h.name for h in heads], {})
        except UtilityError as e:
            raise ArtifactError(f"index: preset {name}: {e}") from None
    # The split too: each head is calibrated on the validation window (every event still counts as history).
    corpus = trained.corpus(events, items, users, split=True)
    head_items = embed_items_heads(trained.model, corpus, batch_size, progress)  # {head: [N, D]}
    head_users = embed_users_heads(trained.model, corpus, head_items, batch_size, progress)  # {head: ([U, K, D], ..)}
    item_vecs, (user_vecs, history) = head_items[SERVED], head_users[SERVED]
    t_embed = time.perf_counter() - t0
    indexes = {h: build_index(v, factory, use_gpu=use_gpu, seed=seed) for h, v in head_items.items()}
    index = indexes[SERVED]
    head_items = {h.name: head_items[h.name] for h in heads}  # the manifest's order: the joint index's columns
    joint = joint_index(head_items, user_vecs.shape[1], factory, use_gpu, seed)
    params = default_search_params(factory)
    for ix in [*indexes.values(), *([joint] if joint is not None else [])]:
        apply_search_params(ix, params)
    calibration = calibrate_heads(trained.model, corpus, heads, role_spec(trained.config.roles),
                                  max_users=calibration_users, seed=seed, items=head_items)
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(user_vecs), min(recall_users, len(user_vecs)), replace=False)
    recall = measure_recall(index, item_vecs, user_vecs[sample].reshape(-1, item_vecs.shape[1]), recall_k)
    log.info("index: %s over %d items: recall@%d = %.4f against exact search on %d users",
             factory, len(item_vecs), recall_k, recall, len(sample))
    pop_rows, pop_scores = popularity(corpus)
    ev = corpus.events
    out = Path(out)
    with StagingFolder(out) as tmp:
        for h, ix in indexes.items():
            faiss.write_index(ix, str(tmp / head_index_file(h, h == SERVED)))
        if joint is not None:
            faiss.write_index(joint, str(tmp / JOINT_INDEX))
        items_t = vectors_table(corpus.catalogue, item_vecs, "item_id")
        for name, col in input_columns({k: v[1:] for k, v in corpus.hist_lookup.items()}).items():
            items_t = items_t.append_column(name, col)  # what a live user's history bag reads per item
        pq.write_table(items_t, tmp / "items.parquet")
        tails = stored_tails(corpus, np.arange(len(ev.user_vocab)), corpus.user_end)
        users_t = (vectors_table(ev.user_vocab, user_vecs, "user_id")
                   .append_column("purchased", purchased_rows(corpus))
                   .append_column("history", list_column(history.offsets, history.rows))
                   .append_column("history_score", list_column(history.offsets, history.scores)))
        for h, (vecs, hist) in head_users.items():  # the other heads' user vectors and history scores
            if h != SERVED:
                assert np.array_equal(hist.offsets, history.offsets)  # one history bag, scored per head
                users_t = (users_t.append_column(head_column("vector", h, False),
                                                 vectors_table(ev.user_vocab, vecs, "user_id").column("vector"))
                           .append_column(head_column("history_score", h, False),
                                          list_column(hist.offsets, hist.scores)))
        for name, values in (("tail_rows", tails.rows), ("tail_events", tails.events), ("tail_ts", tails.ts),
                             ("tail_dwell", tails.dwell)):  # the raw events a live request's events follow
            users_t = users_t.append_column(name, list_column(tails.offsets, values))
        for name, col in input_columns(corpus.user_inputs).items():
            users_t = users_t.append_column(name, col)
        pq.write_table(users_t, tmp / "users.parquet")
        pq.write_table(pa.table({"item_id": corpus.catalogue.take(pa.array(pop_rows)), "score": pop_scores}),
                       tmp / "popular.parquet")
        torch.save(trained.slim(), tmp / "model.pt")
        manifest = Manifest(
            version=out.name, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            checkpoint={"path": str(Path(checkpoint).resolve()), "sha256": sha256(checkpoint)},
            embedding_dim=int(item_vecs.shape[1]), metric="inner_product", factory=factory, search_params=params,
            n_items=len(item_vecs), n_users=len(user_vecs), item_id_type=ev.item_id_type,
            user_id_type=ev.user_id_type,
            recall_check={"k": recall_k, "users": int(len(sample)), "recall": round(recall, 5)},
            repeat_scale=round(trained.model.repeat_scale().item(), 6), interests=int(user_vecs.shape[1]),
            heads={h.name: {"index": head_index_file(h.name, h.name == SERVED),
                            "repeat_scale": round(trained.model.repeat_scale(h.name).item(), 6),
                            "calibration": calibration[h.name]} for h in heads},
            utility_presets=utility_presets,
            joint=None if joint is None else {"index": JOINT_INDEX, "heads": list(head_items)},
        )
        write_manifest(tmp, manifest)
    log.info("index: wrote %s in %.1f s (embedding %.1f s)", out, time.perf_counter() - t0, t_embed)
    return manifest
