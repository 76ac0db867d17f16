"""The index build job: artifact contents, manifest, recall check, atomic folder, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from index.artifact import ArtifactError, read_manifest
from index.build import build
from index.faiss_index import FactoryError, exact_topk, onehot_tail
from retrieval.checkpoint import CheckpointError, load_trained


def test_artifact_contents_match_the_model(artifact, trained):
    m = read_manifest(artifact)
    assert m.factory == "Flat" and m.metric == "inner_product" and m.recall_check["recall"] == 1.0
    assert m.checkpoint["sha256"] and m.item_id_type == "int"
    items = pq.read_table(artifact / "items.parquet")
    users = pq.read_table(artifact / "users.parquet")
    assert items.num_rows == m.n_items == 200  # every catalogue item, those without history too
    assert users.num_rows == m.n_users
    vec = np.stack(items.column("vector").to_numpy(zero_copy_only=False))
    assert vec.shape == (m.n_items, m.embedding_dim)
    # tiny.yaml: out_dim 16, plus the item-bias column and the category prior's 9 (8 categories and "missing")
    assert m.embedding_dim == 16 + 1 + 9
    tail = onehot_tail(vec)  # the prior's block closes every item vector: the service searches it as a gather
    assert tail is not None and tail[0] == 16 + 1 and tail[1].min() >= 1  # every tiny item has a known category
    assert np.allclose(np.linalg.norm(vec[:, :16], axis=1), 1.0, atol=1e-4)
    # The slim model.pt reproduces the same item embeddings as the training checkpoint.
    a, b = load_trained(trained), load_trained(artifact / "model.pt")
    corpus = a.corpus()
    from retrieval.inference import to_torch
    x = to_torch(corpus.item_batch(np.arange(5)))
    with torch.inference_mode():
        assert torch.allclose(a.model.embed_items(x), b.model.embed_items(x))
    assert np.allclose(vec[:5], a.model.embed_items(x).detach().numpy(), atol=1e-6)


def test_popular_and_purchased_exports(artifact):
    pop = pq.read_table(artifact / "popular.parquet")
    s = pop.column("score").to_numpy()
    assert len(s) > 0 and (np.diff(s) <= 0).all()
    users = pq.read_table(artifact / "users.parquet")
    assert sum(len(p) for p in users.column("purchased").to_pylist()) > 0


def test_ann_artifact_records_measured_recall(trained, tmp_path):
    m = build(trained, tmp_path / "hnsw", "HNSW32", progress=False, recall_k=20)
    assert 0.5 < m.recall_check["recall"] <= 1.0 and m.recall_check["k"] == 20
    assert m.search_params == {"efSearch": 128}
    raw = json.loads((tmp_path / "hnsw" / "manifest.json").read_text())
    assert raw["recall_check"]["recall"] == m.recall_check["recall"]


def test_failed_build_leaves_no_folder(trained, tmp_path, monkeypatch):
    """A failure after files were written (here: the manifest) leaves neither the folder nor the staging copy."""
    import index.build as job

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(job, "write_manifest", boom)
    with pytest.raises(OSError, match="disk full"):
        build(trained, tmp_path / "bad", "Flat", progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FactoryError, match="'NotAFactory' cannot be built for dim .*could not parse"):
        build(trained, tmp_path / "bad", "NotAFactory", progress=False)  # refused before embedding anything
    assert list(tmp_path.iterdir()) == []


def test_existing_version_is_not_overwritten(artifact):
    from index.artifact import StagingFolder

    before = read_manifest(artifact)
    with pytest.raises(ArtifactError, match="already exists"), StagingFolder(artifact):
        pass
    assert read_manifest(artifact) == before


def test_bad_checkpoints(tmp_path, trained):
    with pytest.raises(CheckpointError, match="no such file"):
        load_trained(tmp_path / "none.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_trained(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointError, match="lacks"):
        load_trained(tmp_path / "partial.ckpt")
    ck = torch.load(trained, map_location="cpu", weights_only=True)
    ck["hyper_parameters"]["interests"] = 0
    torch.save(ck, tmp_path / "no_interests.ckpt")
    with pytest.raises(CheckpointError, match="describe no valid model .*interests must be 1 or more"):
        load_trained(tmp_path / "no_interests.ckpt")


def test_history_scores_are_the_models_full_scores(artifact, trained):
    """users.parquet's history items are each user's distinct bag items, scored as offline evaluation scores them."""
    from retrieval.embed import user_state_scores

    m, t = read_manifest(artifact), load_trained(trained)
    assert m.repeat_scale == pytest.approx(t.model.repeat_scale().item(), abs=1e-6) and m.repeat_scale > 0
    corpus = t.corpus()
    users = pq.read_table(artifact / "users.parquet")
    items = np.stack(pq.read_table(artifact / "items.parquet").column("vector").to_numpy(zero_copy_only=False))
    codes = np.arange(20)
    now = np.full(20, corpus.events.ts.max() + 1)
    full = user_state_scores(t.model, corpus, codes, corpus.user_end[codes], now, items.astype(np.float32))  # [20, N]
    bag = corpus.user_batch(codes, corpus.user_end[codes], now)["hist_rows"]
    n_hist = 0
    for u in codes:
        rows = np.asarray(users.column("history")[int(u)].as_py(), np.int64)
        assert rows.tolist() == sorted(set(bag[u][bag[u] > 0] - 1))
        assert np.allclose(users.column("history_score")[int(u)].as_py(), full[u, rows], atol=1e-5)
        others = np.setdiff1d(np.arange(len(items)), rows)
        vecs = np.asarray(users.column("vector")[int(u)].as_py()).reshape(m.interests, -1)  # [K, D]
        assert np.allclose(full[u, others], (items[others] @ vecs.T).max(1), atol=1e-5)
        n_hist += len(rows)
    assert n_hist > 0


def test_exact_user_topk_is_what_flat_serves(artifact):
    import faiss
    index = faiss.read_index(str(artifact / "index.faiss"))
    items = np.stack(pq.read_table(artifact / "items.parquet").column("vector").to_numpy(zero_copy_only=False))
    users = np.stack(pq.read_table(artifact / "users.parquet").column("vector").to_numpy(zero_copy_only=False))
    m = read_manifest(artifact)
    assert users.shape == (m.n_users, m.interests * m.embedding_dim) and m.interests == 2
    queries = users[:20].reshape(-1, m.embedding_dim).astype(np.float32)  # one row per interest
    _, rows = index.search(queries, 10)
    assert (rows == exact_topk(queries, items.astype(np.float32), 10)[1]).all()
    # The two interests of a user are different vectors (each searched).
    assert not np.allclose(queries[0::2], queries[1::2], atol=1e-3)


def test_index_command_refuses_a_bad_factory_in_one_line(trained, tmp_path, caplog):
    from index.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["build", "--checkpoint", str(trained), "--out", str(tmp_path / "v1"), "--factory", "PQ16",
              "--no-progress"])
    assert exit_.value.code == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "'PQ16' cannot be built for dim" in errors[0].getMessage()
    assert not (tmp_path / "v1").exists()


def test_one_vector_per_head_gets_a_joint_index_of_the_heads_vectors_side_by_side(one_vector_artifact, artifact):
    import faiss

    m = read_manifest(one_vector_artifact)
    assert m.interests == 1 and m.joint == {"index": "index_joint.faiss", "heads": list(m.heads)}
    assert "index_joint.faiss" in m.files and len(m.heads) == 2
    joint = faiss.read_index(str(one_vector_artifact / "index_joint.faiss"))
    heads = [faiss.read_index(str(one_vector_artifact / spec["index"])) for spec in m.heads.values()]
    side_by_side = np.hstack([ix.reconstruct_n(0, ix.ntotal) for ix in heads])  # [N, 2D]
    assert joint.d == 2 * m.embedding_dim and np.array_equal(joint.reconstruct_n(0, joint.ntotal), side_by_side)
    # Several interest vectors per user: a sum of per-head maxima is no one inner product, so no joint index.
    assert read_manifest(artifact).joint is None and not (artifact / "index_joint.faiss").exists()
