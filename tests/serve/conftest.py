from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient
from helpers import TOKEN

from index.build import build
from serve.app import create_app
from serve.settings import Settings


@pytest.fixture(scope="session")
def root(artifact, trained, tmp_path_factory):
    """An artifacts root with v1 (Flat) and v2 (HNSW32) built from the same checkpoint."""
    r = tmp_path_factory.mktemp("root")
    shutil.copytree(artifact, r / "v1")
    build(trained, r / "v2", "HNSW32", progress=False)
    return r


@pytest.fixture()
def client(root):
    app = create_app(Settings(artifacts=root / "v1", admin_token=TOKEN))
    with TestClient(app) as c:
        yield c
