"""The checkpoint contract: read into the plain inference module, without Lightning; old layouts still load."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, fit_args

from retrieval.checkpoint import CheckpointError, load_trained
from retrieval.inference import TwoTower, to_torch


def old_layout(src, dst):
    """The checkpoint as written before the towers moved under ``net``: their keys at the top level."""
    ck = torch.load(src, weights_only=True)
    ck["state_dict"] = {k.removeprefix("net."): v for k, v in ck["state_dict"].items()}
    assert any(k.startswith("item_tower.") for k in ck["state_dict"])
    torch.save(ck, dst)
    return dst


def test_loads_into_the_plain_module(trained):
    t = load_trained(trained)
    assert type(t.model) is TwoTower and not t.model.training
    assert t.config.events == t.data["events"] and t.config.sessions.session_gap_s == t.data["sessions"]["session_gap_s"]


def test_a_checkpoint_of_the_old_layout_loads_and_embeds_the_same(trained, tmp_path):
    new, old = load_trained(trained), load_trained(old_layout(trained, tmp_path / "old.ckpt"))
    x = to_torch(new.corpus().item_batch(np.arange(7)))
    with torch.no_grad():
        assert torch.equal(new.model.embed_items(x), old.model.embed_items(x))


def test_training_resumes_from_a_checkpoint_of_the_old_layout(trained, tiny_world, tmp_path):
    from retrieval.cli import main  # the CLI imports Lightning, which the other tests here must not need

    ck = old_layout(trained, tmp_path / "old.ckpt")
    cli = main(["fit", *fit_args(tiny_world, tmp_path, "--trainer.max_epochs=5"), f"--ckpt_path={ck}"])
    assert cli.trainer.current_epoch == 5
    assert cli.model.freq.step.item() > torch.load(trained, weights_only=True)["state_dict"]["freq.step"].item()


def test_a_renamed_weight_is_refused_in_one_line(trained, tmp_path):
    ck = torch.load(trained, weights_only=True)
    ck["state_dict"]["net.towers_of_old"] = ck["state_dict"].pop("net.repeat_raw")
    torch.save(ck, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="weights do not fit") as e:
        load_trained(tmp_path / "bad.ckpt")
    assert "\n" not in str(e.value).split("(")[0]


@pytest.mark.parametrize("module, call", [
    ("serve.app", "pass"),
    ("index.build", "index.build.load_trained(sys.argv[1])"),
    ("retrieval.evaluate", "pass"),
])
def test_serving_and_the_index_job_never_import_lightning(module, call, trained):
    """Lightning is training's alone: the service, the index job (through loading a checkpoint) and evaluation
    run on the plain inference module."""
    code = f"import sys, {module}; {call}; assert 'lightning' not in sys.modules, 'lightning imported'"
    r = subprocess.run([sys.executable, "-c", code, str(trained)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
