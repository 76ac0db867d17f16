"""--gpu: indexes held on the GPU search as on the CPU; without a GPU the service says so in one line and
answers from the CPU."""

from __future__ import annotations

import logging

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from helpers import AUTH, TOKEN

from index.faiss_index import gpu_count
from serve.app import create_app
from serve.load import load_served
from serve.settings import Settings


def answers(root, version: str, gpu: bool, users=("1", "2", "3", "new-user")) -> list[list]:
    with TestClient(create_app(Settings(artifacts=root / version, gpu=gpu, admin_token=TOKEN))) as c:
        return [[(x["item_id"], round(x["score"], 4)) for x in c.get("/candidates", params={"user": u, "k": 20}).json()
                 ["candidates"]] for u in users]


def test_gpu_asked_without_one_falls_back_in_one_line(root, caplog):
    if gpu_count() > 0:
        pytest.skip("a GPU is present: the fallback is not taken")
    with caplog.at_level(logging.WARNING, logger="serve.load"):
        got = answers(root, "v1", gpu=True)
    lines = [r.getMessage() for r in caplog.records if "--gpu" in r.getMessage()]
    assert len(lines) == 1 and "no GPU" in lines[0]
    assert got == answers(root, "v1", gpu=False)


@pytest.mark.gpu
@pytest.mark.parametrize("version", ["v1", "v2"])  # Flat on the GPU; HNSW has no GPU type and stays on the CPU
def test_gpu_index_answers_as_the_cpu_index(root, version):
    if gpu_count() == 0:
        pytest.skip("needs faiss-gpu and a CUDA device")
    assert answers(root, version, gpu=True) == answers(root, version, gpu=False)


@pytest.mark.gpu
def test_gpu_index_takes_new_items(root):
    if gpu_count() == 0:
        pytest.skip("needs faiss-gpu and a CUDA device")
    with TestClient(create_app(Settings(artifacts=root / "v1", gpu=True, admin_token=TOKEN))) as c:
        new = {"item_id": 7_777_777, "category": "c1", "brand": "b9", "price": 30.0, "rating": 4.5}
        assert c.post("/admin/items", json={"items": [new]}, headers=AUTH).status_code == 200
        served = c.app.state.service.served
        assert served.searcher("conversion").ntotal == served.index.ntotal and served.gpu


def test_gpu_asked_without_one_falls_back_in_one_line_for_the_joint_index_too(one_vector_artifact, caplog):
    if gpu_count() > 0:
        pytest.skip("a GPU is present: the fallback is not taken")
    with caplog.at_level(logging.WARNING, logger="serve.load"):
        served = load_served(one_vector_artifact, gpu=True)
    lines = [r.getMessage() for r in caplog.records if "--gpu" in r.getMessage()]
    assert len(lines) == 1 and "index_joint.faiss" in lines[0], lines
    assert served.joint is not None and served.gpu_joint is None and not served.gpu


@pytest.mark.gpu
def test_gpu_joint_index_answers_as_the_cpu_one(one_vector_artifact):
    if gpu_count() == 0:
        pytest.skip("needs faiss-gpu and a CUDA device")
    users = pq.read_table(one_vector_artifact / "users.parquet", columns=["user_id"]).column("user_id")
    got = {}
    for gpu in (True, False):
        served = load_served(one_vector_artifact, gpu=gpu)
        assert (served.gpu_joint is not None) == gpu
        utility = served.utility("conversion:1,engagement:0.5", "score")
        got[gpu] = [served.candidates(u, 20, False, utility).ids for u in users.to_pylist()[:5]]
    assert got[True] == got[False]
