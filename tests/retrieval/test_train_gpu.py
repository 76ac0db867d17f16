"""The training step on a CUDA device: the loss in bf16 autocast against fp32 on the same batches, and a fit
with ``--trainer.accelerator cuda --trainer.precision bf16-mixed`` whose checkpoint embeds on the CPU."""

from __future__ import annotations

import pytest
import torch
from helpers import fit_args
from lightning.pytorch.utilities import move_data_to_device

from retrieval.checkpoint import load_trained
from retrieval.cli import main
from retrieval.data import TrainStream
from retrieval.model import TwoTowerModel

pytestmark = pytest.mark.gpu


def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


@pytest.mark.parametrize("interests", [1, 4])
def test_bf16_autocast_loss_is_within_tolerance_of_fp32(tiny_world, tmp_path, interests):
    device = cuda()
    cli = main(["fit", *fit_args(tiny_world, tmp_path, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                                 f"--model.interests={interests}")])
    model: TwoTowerModel = cli.model.to(device).eval()  # no ID dropout draws, no frequency update between calls
    dm = cli.datamodule
    stream = iter(TrainStream(dm.corpus, 128, 64, 0.25, seed=3))
    for _ in range(3):
        batch = move_data_to_device(next(stream), device)
        fp32 = {k: float(v.detach()) for k, v in model._step(batch).items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses = model._step(batch)
        bf16 = {k: float(v.detach()) for k, v in losses.items()}
        for k in fp32:
            assert bf16[k] == pytest.approx(fp32[k], rel=2e-2, abs=2e-2), (k, fp32, bf16)
        model.zero_grad(set_to_none=True)
        losses["total"].backward()  # the loss's own backward passes (retrieval/losses.py) under autocast
        grads = [p.grad.coalesce().values() if p.grad.is_sparse else p.grad for p in model.parameters()
                 if p.grad is not None]
        assert len(grads) > 5 and all(torch.isfinite(g).all() for g in grads)


def test_fit_on_cuda_in_bf16_gives_a_checkpoint_that_embeds_on_the_cpu(tiny_world, tmp_path):
    cuda()
    main(["fit", *fit_args(tiny_world, tmp_path, "--trainer.accelerator=cuda", "--trainer.precision=bf16-mixed",
                           "--trainer.max_epochs=1")])
    trained = load_trained(tmp_path / "checkpoints" / "last.ckpt")
    assert next(trained.model.parameters()).device.type == "cpu"
    assert all(torch.isfinite(p).all() for p in trained.model.parameters())
