"""Faults: a training run killed mid-epoch resumes to the same model; a torn save loses nothing; a checkpoint
carrying code is refused without running it."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import fit_args

from retrieval.checkpoint import CheckpointError, load_trained
from retrieval.checkpoint_io import AtomicCheckpointIO

EPOCHS = ["--trainer.max_epochs=3", "--trainer.limit_train_batches=null", "--trainer.limit_val_batches=0",
          "--model.id_dropout=0"]  # id dropout draws from torch's global RNG, which a resumed run re-seeds


def fit(world, root, *extra):
    return [sys.executable, "-m", "retrieval", "fit", *fit_args(world, root, *EPOCHS, *extra)]


def state(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tiny_world, tmp_path):
    subprocess.run(fit(tiny_world, tmp_path / "a"), check=True, capture_output=True, timeout=600)
    ref = state(tmp_path / "a" / "checkpoints" / "last.ckpt")

    b = tmp_path / "b"
    proc = subprocess.Popen(fit(tiny_world, b), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = b / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline:  # the end of epoch 0 is saved: kill inside epoch 1
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(last, weights_only=True)
    assert killed_at["epoch"] < 2, "the run finished before it could be killed"
    subprocess.run(fit(tiny_world, b, f"--ckpt_path={last}"), check=True, capture_output=True, timeout=600)
    got = state(last)
    assert torch.load(last, weights_only=True)["epoch"] == 2
    for k in ref:  # same seed, same data order, same negatives: the same weights
        assert torch.allclose(ref[k].float(), got[k].float(), atol=1e-5), k


def test_a_torn_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def torn(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # stands for the process dying mid-write

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/retrieval-pwned-marker",))


def test_checkpoint_with_code_is_refused_unrun(tmp_path):
    marker = "/tmp/retrieval-pwned-marker"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"hyper_parameters": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_trained(path)
    assert not os.path.exists(marker)
