"""Loading an artifact folder into a :class:`serve.store.Served`: every file read and checked against the
manifest and the model, so that anything inconsistent is an ArtifactError naming it, before the service answers
from it (at start and at a swap)."""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from index.artifact import JOINT_INDEX, ArtifactError, Manifest, head_column, read_manifest
from index.faiss_index import apply_search_params, to_gpu
from retrieval.calibration import Platt
from retrieval.checkpoint import CheckpointError, load_trained
from retrieval.corpus import history_features
from retrieval.heads import SERVED
from retrieval.live import LiveState, Tails, blank_user
from retrieval.vocab import TowerVocab
from serve.ids import IdLookup
from serve.store import Served

log = logging.getLogger(__name__)


def _vectors(path: Path, n: int, per_row: int, dim: int) -> tuple[pa.Table, np.ndarray]:
    """The table and its vectors [n, per_row, dim]."""
    t = pq.read_table(path)
    if t.num_rows != n:
        raise ArtifactError(f"artifact {path.parent}: {path.name} has {t.num_rows} rows, the manifest says {n}")
    vec = t.column("vector").combine_chunks()
    if not pa.types.is_fixed_size_list(vec.type) or vec.type.list_size != per_row * dim:
        raise ArtifactError(f"artifact {path.parent}: {path.name} vectors are {vec.type}, the manifest says "
                            f"{per_row} x dim {dim}")
    return t, vec.values.to_numpy(zero_copy_only=False).reshape(n, per_row, dim).astype(np.float32, copy=False)


def _index(folder: Path, name: str, m: Manifest, dim: int | None = None) -> faiss.Index:
    """One head's index (or the joint one, of ``dim``), checked against the manifest, with its search
    parameters."""
    dim = m.embedding_dim if dim is None else dim
    try:
        index = faiss.read_index(str(folder / name))
    except RuntimeError as e:
        raise ArtifactError(f"artifact {folder}: {name} cannot be read ({str(e).splitlines()[0]})") from None
    if index.d != dim or index.ntotal != m.n_items:
        raise ArtifactError(f"artifact {folder}: {name} has dim {index.d} and {index.ntotal} items, the manifest "
                            f"says dim {dim} and {m.n_items} items")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ArtifactError(f"artifact {folder}: {name} metric is not inner product")
    apply_search_params(index, m.search_params)
    return index


def _vector_column(t: pa.Table, name: str, folder: Path, m: Manifest) -> np.ndarray:
    """A head's user vectors [U, K, D] from its users.parquet column."""
    if name not in t.column_names:
        raise ArtifactError(f"artifact {folder}: users.parquet has no column {name} for its manifest's heads")
    vec = t.column(name).combine_chunks()
    if not pa.types.is_fixed_size_list(vec.type) or vec.type.list_size != m.interests * m.embedding_dim:
        raise ArtifactError(f"artifact {folder}: users.parquet {name} is {vec.type}, the manifest says "
                            f"{m.interests} x dim {m.embedding_dim}")
    return vec.values.to_numpy(zero_copy_only=False).reshape(len(vec), m.interests, m.embedding_dim).astype(
        np.float32, copy=False)


def _inputs(table: pa.Table, name: str) -> np.ndarray:
    """A tower input column ([N], or [N, W] from a fixed-size list) as a writable numpy array (torch takes it)."""
    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size).copy()
    return col.to_numpy(zero_copy_only=False).copy()


def on_gpu(indexes: dict[str, faiss.Index]) -> dict[str, faiss.Index]:
    """GPU copies of the indexes that have a GPU type (Flat, IVF); one log line for those that stay on the CPU."""
    out, why = {}, {}
    for h, ix in indexes.items():
        g, reason = to_gpu(ix)
        if reason is None:
            out[h] = g
        else:
            why[h] = reason
    if why:
        log.warning("serve: --gpu: searching on the CPU for head(s) %s: %s", sorted(why), "; ".join(set(why.values())))
    return out


def load_served(folder: str | Path, gpu: bool = False) -> Served:
    """Load and validate an artifact folder; any inconsistency is an ArtifactError saying which. gpu: search
    from GPU copies of the indexes where faiss can (:func:`on_gpu`)."""
    folder = Path(folder)
    m = read_manifest(folder)
    indexes = {h: _index(folder, spec["index"], m) for h, spec in m.heads.items()}
    joint = None if m.joint is None else _index(folder, JOINT_INDEX, m, len(m.heads) * m.embedding_dim)
    try:
        items_t = pq.read_table(folder / "items.parquet")
        items = items_t.column("item_id").combine_chunks()
        users_t, user_vecs = _vectors(folder / "users.parquet", m.n_users, m.interests, m.embedding_dim)
        head_vecs = {h: user_vecs if h == SERVED else _vector_column(
            users_t, head_column("vector", h, False), folder, m) for h in m.heads}
        lookups = {n[3:]: np.concatenate([[0], _inputs(items_t, n)]) for n in items_t.column_names if n.startswith("in_")}
        user_static = {n[3:]: _inputs(users_t, n) for n in users_t.column_names if n.startswith("in_")}
        tail = {n: users_t.column(f"tail_{n}").combine_chunks() for n in ("rows", "events", "ts", "dwell")}
        pop = pq.read_table(folder / "popular.parquet")
        purchased = users_t.column("purchased").combine_chunks()
        history = users_t.column("history").combine_chunks()
        history_score = {h: users_t.column(head_column("history_score", h, h == SERVED)).combine_chunks()
                         for h in m.heads}
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise ArtifactError(f"artifact {folder}: a Parquet file cannot be read ({e})") from None
    if len(items) != m.n_items:
        raise ArtifactError(f"artifact {folder}: items.parquet has {len(items)} rows, the manifest says {m.n_items}")
    for h, hs in history_score.items():
        if not np.array_equal(history.offsets.to_numpy(), hs.offsets.to_numpy()):
            raise ArtifactError(f"artifact {folder}: users.parquet history and its scores of head {h} do not line up")
    item_ids = items.to_numpy(zero_copy_only=False)
    pop_rows = pc.index_in(pop.column("item_id"), value_set=items).to_numpy(zero_copy_only=False).astype(np.int64)
    # The fallback answers any k up to the catalogue: popular items first, then the rest in catalogue order.
    rest = np.setdiff1d(np.arange(m.n_items), pop_rows, assume_unique=False)
    pop_scores = np.concatenate([pop.column("score").to_numpy().astype(np.float32), np.zeros(len(rest), np.float32)])
    try:
        trained = load_trained(folder / "model.pt")
    except CheckpointError as e:
        raise ArtifactError(f"artifact {folder}: model.pt: {e}") from None
    if trained.model.heads != list(m.heads):
        raise ArtifactError(f"artifact {folder}: model.pt has heads {trained.model.heads}, the manifest lists "
                            f"{list(m.heads)}")
    if trained.model.embedding_dim != m.embedding_dim or trained.model.interests != m.interests:
        raise ArtifactError(f"artifact {folder}: model.pt embeds dim {trained.model.embedding_dim} with "
                            f"{trained.model.interests} interest(s), the manifest says dim {m.embedding_dim} with "
                            f"{m.interests}")
    config = trained.config
    item_vocab = TowerVocab.from_state(trained.vocab["items"])
    want = {"hist_items", *(f"hist_{f}" for f in history_features(item_vocab, config.history))}
    if set(lookups) != want:
        raise ArtifactError(f"artifact {folder}: items.parquet holds history inputs {sorted(lookups)}, its model "
                            f"reads {sorted(want)}")
    user_vocab = TowerVocab.from_state(trained.vocab["users"])
    blank = blank_user(user_vocab)
    tails = Tails(tail["rows"].offsets.to_numpy().astype(np.int64), tail["rows"].values.to_numpy(),
                  tail["events"].values.to_numpy(), tail["ts"].values.to_numpy(),
                  tail["dwell"].values.to_numpy(zero_copy_only=False))
    gpu_copies = on_gpu({**indexes, **({} if joint is None else {JOINT_INDEX: joint})}) if gpu else {}
    gpu_joint = gpu_copies.pop(JOINT_INDEX, None)  # the rest are the heads'
    served = Served(
        path=folder, manifest=m, indexes=indexes, item_ids=item_ids, items=IdLookup(items, m.item_id_type),
        live=LiveState(config, lookups), tails=tails, user_static=user_static, blank_static=blank,
        users=IdLookup(users_t.column("user_id").combine_chunks(), m.user_id_type), user_vecs=head_vecs,
        purchased_offsets=purchased.offsets.to_numpy(), purchased_rows=purchased.values.to_numpy(),
        history_offsets=history.offsets.to_numpy(), history_rows=history.values.to_numpy(),
        history_scores={h: hs.values.to_numpy() for h, hs in history_score.items()},
        calibration={h: Platt.from_dict(spec["calibration"]) for h, spec in m.heads.items() if spec["calibration"]},
        popular_rows=np.concatenate([pop_rows, rest]), popular_scores=pop_scores, model=trained,
        gpu=gpu_copies, joint=joint, gpu_joint=gpu_joint,
    )
    # Parquet decoding leaves freed buffers in pyarrow's allocator, which the service would keep resident; the
    # decoded tables go first (combine_chunks copied their columns), then the pool gives the memory back.
    del users_t, items_t, pop, purchased, history, history_score, tail
    pa.default_memory_pool().release_unused()
    served.onehot  # noqa: B018 (found once at load, not by the first request: a scan of the exact indexes' vectors)
    log.info("serve: loaded %s (%s): %d items, %d users, recall check %s", folder, m.model_version, m.n_items,
             m.n_users, m.recall_check)
    return served
