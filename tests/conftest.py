"""Shared fixtures: a tiny seeded synthetic world and a model trained on it once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import fit_args

from retrieval.synth import WorldConfig, generate


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_world")
    generate(out, WorldConfig(users=400, items=200, categories=8, seed=7))
    return out


@pytest.fixture(scope="session")
def trained(tiny_world, tmp_path_factory) -> Path:
    """A checkpoint of the tiny config trained for a few epochs (shared by the index and service tests)."""
    from retrieval.cli import main

    root = tmp_path_factory.mktemp("trained")
    main(["fit", *fit_args(tiny_world, root, "--trainer.max_epochs=4", "--trainer.limit_train_batches=null")])
    ckpt = root / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    return ckpt


@pytest.fixture(scope="session")
def artifact(trained, tmp_path_factory) -> Path:
    from index.build import build

    out = tmp_path_factory.mktemp("artifacts") / "v1"
    build(trained, out, "Flat", progress=False)
    return out


@pytest.fixture(scope="session")
def trained_one_vector(tiny_world, tmp_path_factory) -> Path:
    """The tiny config with one user vector per head (its two heads' raw-score utility is one inner product)."""
    from retrieval.cli import main

    root = tmp_path_factory.mktemp("trained_one_vector")
    main(["fit", *fit_args(tiny_world, root, "--trainer.max_epochs=2", "--trainer.limit_train_batches=null",
                           "--model.interests=1")])
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def one_vector_artifact(trained_one_vector, tmp_path_factory) -> Path:
    """A Flat artifact of :func:`trained_one_vector`: it carries the joint index."""
    from index.build import build

    out = tmp_path_factory.mktemp("one_vector") / "v1"
    build(trained_one_vector, out, "Flat", progress=False)
    return out
