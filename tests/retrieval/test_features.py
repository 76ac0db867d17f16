"""Feature encoders by signal format, fitted on training rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from retrieval import features
from retrieval.contract import DataError


def fit_encode(spec, values, typ=None):
    col = pa.array(values, typ)
    state = features.fit_encoder(features.parse_specs([spec], "item")[0], col, "t.parquet")
    return state, features.encode(state, col, "t.parquet")


def test_categorical_vocab_and_unknown():
    state, x = fit_encode({"name": "c", "kind": "categorical"}, ["b", "a", None, "b"])
    assert state["vocab"] == ["a", "b"] and x.tolist() == [2, 1, 0, 2]
    unseen = features.encode(state, pa.array(["z", "a"]), "t")
    assert unseen.tolist() == [0, 1] and features.width(state) == 3


def test_hashed_is_stable_and_in_range():
    state, x = fit_encode({"name": "b", "kind": "hashed", "buckets": 8}, ["p", "q", "p", None])
    assert x[0] == x[2] and x[3] == 0 and ((x[:3] >= 1) & (x[:3] <= 8)).all()
    again = features.encode(state, pa.array(["p", "q"]), "t")
    assert again.tolist() == x[:2].tolist()
    ints = features.stable_hash(pa.array([1, 2, 1]))
    assert ints[0] == ints[2] != ints[1]


def test_hashed_warns_when_values_share_buckets(caplog):
    values = [f"city{i}" for i in range(200)] * 2
    buckets = features.stable_hash(pa.array(values[:200])) % np.uint64(64)
    _, counts = np.unique(buckets, return_counts=True)
    shared = int(counts[counts > 1].sum())  # brute force: values whose bucket holds another value
    with caplog.at_level("WARNING", logger="retrieval.features"):
        fit_encode({"name": "city", "kind": "hashed", "buckets": 64}, values)
    (msg,) = [r.getMessage() for r in caplog.records]
    assert f"'city' hashes 200 distinct values into 64 buckets, and {shared} of them" in msg
    assert "about 2048 keep that under 10%" in msg
    caplog.clear()
    with caplog.at_level("WARNING", logger="retrieval.features"):
        fit_encode({"name": "city", "kind": "hashed", "buckets": 1 << 20}, values[:20] + [None])
    assert caplog.records == []


def test_multi_hot_pads_and_truncates():
    state, x = fit_encode({"name": "t", "kind": "multi_hot", "max_len": 2}, [["a", "b", "c"], [], None, ["c"]])
    assert state["vocab"] == ["a", "b", "c"]
    assert x.tolist() == [[1, 2], [0, 0], [0, 0], [3, 0]]


def test_continuous_clip_normalise_and_nan_error():
    state, x = fit_encode({"name": "p", "kind": "continuous", "clip_quantile": 0.0}, [0.0, 5.0, 10.0, None])
    assert np.allclose(x[:, 0], [0, 0.5, 1, 0])
    assert features.encode(state, pa.array([20.0, -5.0]), "t")[:, 0].tolist() == [1.0, 0.0]
    with pytest.raises(DataError, match="column 'p' has NaN or infinite"):
        fit_encode({"name": "p", "kind": "continuous"}, [1.0, float("nan")])


def test_dense_vectors():
    typ = pa.list_(pa.float32(), 2)
    state, x = fit_encode({"name": "v", "kind": "dense"}, [[1, 2], None, [3, 4]], typ)
    assert state["dim"] == 2 and x.tolist() == [[1, 2], [0, 0], [3, 4]]


def test_spec_errors():
    with pytest.raises(DataError, match="kind 'bogus'"):
        features.parse_specs([{"name": "x", "kind": "bogus"}], "item")
    with pytest.raises(DataError, match="unknown option"):
        features.parse_specs([{"name": "x", "kind": "hashed", "bucket": 3}], "item")
    with pytest.raises(DataError, match="continuous feature must be numeric"):
        fit_encode({"name": "p", "kind": "continuous"}, ["a"])
