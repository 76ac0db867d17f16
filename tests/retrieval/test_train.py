"""Training end to end through the CLI: fit -> test, planted structure, ablations, resume, DDP."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import ROOT, fit_args, tiny_corpus

from retrieval.cli import main


def metrics(cli) -> dict[str, float]:
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def test_fit_then_test_reports_recall(trained, tiny_world, tmp_path):
    cli = main(["test", *fit_args(tiny_world, tmp_path), f"--ckpt_path={trained}"])
    m = metrics(cli)
    for key in ("test/conv_recall@10", "test/conv_recall@100", "test/eng_recall@10", "test/eng_recall@100"):
        assert 0.0 <= m[key] <= 1.0
    assert m["test/conv_users"] > 0
    # The checkpoint is the index job's contract: config, data config, vocabularies, weights.
    ck = torch.load(trained, weights_only=True)
    assert {"hyper_parameters", "datamodule_hyper_parameters", "RetrievalData", "state_dict"} <= set(ck)
    # One optimizer step a batch (the sparse optimizer steps underneath): 4 epochs of the tiny world's batches.
    assert ck["global_step"] == 4 * (len(tiny_corpus(tiny_world).examples(0)) // 128) > 0


def planted_world(path, n_users=240, n_items=120, clusters=6, seed=0):
    """Users and items in clusters; users view and buy only items of their own cluster, popularity is flat."""
    rng = np.random.default_rng(seed)
    rows = []
    per = n_items // clusters
    t = 1_000_000
    for u in range(n_users):
        c = u % clusters
        for _session in range(8):
            t0 = t + rng.integers(0, 30 * 86400)
            for v in range(5):
                item = c * per + int(rng.integers(per))
                rows.append({"user_id": u, "item_id": item, "event": "view", "ts": int(t0 + 60 * v), "dwell_s": 20.0})
                if rng.random() < 0.3:
                    rows.append({"user_id": u, "item_id": item, "event": "purchase", "ts": int(t0 + 60 * v + 30),
                                 "dwell_s": None})
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_planted_structure_is_retrieved(tmp_path):
    planted_world(tmp_path / "events.parquet")
    args = ["--config", str(ROOT / "configs" / "tiny.yaml"), f"--data.events={tmp_path / 'events.parquet'}",
            "--data.items=null", "--data.users=null", "--data.item_features=[]", "--data.user_features=[]",
            "--model.prior_feature=null", f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=6", "--trainer.limit_train_batches=null",
            "--data.batch_size=64"]
    main(["fit", *args])
    m = metrics(main(["test", *args, f"--ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"]))
    chance = 10 / 120  # a random or popularity ranking (popularity is flat here)
    assert m["test/conv_recall@10"] > 3.5 * chance, m  # the own cluster holds 20 items: a perfect model gets ~0.5


@pytest.mark.parametrize("ablation", ["conversion_only", "engagement_only", "dual_no_head", "no_logq", "in_batch_only",
                                      "no_repeat"])
def test_each_ablation_trains_from_config_alone(ablation, tiny_world, tmp_path):
    cli = main(["fit", *fit_args(tiny_world, tmp_path, "--config", str(ROOT / "configs" / "ablations" / f"{ablation}.yaml"),
                                 "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=0")])
    heads = set(cli.model.net.user_tower.heads)
    assert heads == ({"conversion"} if ablation not in ("no_logq", "in_batch_only", "no_repeat") else {"conversion", "engagement"})
    assert (cli.model.net.repeat_raw is None) == (ablation == "no_repeat")
    assert np.isfinite(metrics(cli)["train/loss"])


def test_resume_from_checkpoint_continues(tiny_world, tmp_path):
    main(["fit", *fit_args(tiny_world, tmp_path, "--trainer.max_epochs=1", "--trainer.limit_val_batches=0")])
    first = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] == 5 and first["epoch"] == 0  # 5 batches, one optimizer step each
    cli = main(["fit", *fit_args(tiny_world, tmp_path, "--trainer.max_epochs=2", "--trainer.limit_val_batches=0"),
                f"--ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"])
    assert cli.trainer.global_step == 10 and cli.trainer.current_epoch == 2
    assert cli.model.freq.step.item() == 10  # the frequency estimator resumed with the weights


def test_bad_data_exits_with_a_clear_error(tmp_path):
    (tmp_path / "events.parquet").write_text("not parquet")
    r = subprocess.run([sys.executable, "-m", "retrieval", "fit", "--config", str(ROOT / "configs" / "tiny.yaml"),
                        f"--data.events={tmp_path / 'events.parquet'}", "--data.items=null", "--data.users=null",
                        "--data.item_features=[]", "--data.user_features=[]"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "not a readable Parquet file" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tiny_world, tmp_path):
    r = subprocess.run([sys.executable, "-m", "retrieval", "fit", *fit_args(tiny_world, tmp_path),
                        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
                        "--trainer.max_epochs=2"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Starting with 2 processes" in r.stderr + r.stdout
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["epoch"] == 1 and ck["global_step"] == 10  # each rank took 5 batches a epoch, in step


def test_refit_trains_through_the_validation_window(tiny_world, tmp_path):
    """configs/refit.yaml: no validation window, a fixed number of epochs, the last checkpoint kept; the
    training window then reaches the test window, so items first seen in validation get a learned id."""
    def fit(root, *extra):
        return main(["fit", *fit_args(tiny_world, root, "--trainer.max_epochs=1", *extra)])

    chosen = fit(tmp_path / "select")
    test_start = chosen.datamodule.corpus.split.test_start
    refit = fit(tmp_path / "refit", "--config", str(ROOT / "configs" / "refit.yaml"), f"--data.split.val_start={test_start}")
    c0, c1 = chosen.datamodule.corpus, refit.datamodule.corpus
    assert c1.split.val_start == c1.split.test_start == test_start
    assert len(c1.item_vocab.id_vocab) > len(c0.item_vocab.id_vocab)
    assert refit.trainer.num_val_batches == [] or sum(refit.trainer.num_val_batches) == 0
    assert (tmp_path / "refit" / "checkpoints" / "last.ckpt").exists()


def test_refit_config_added_to_a_config_that_monitors_validation(tiny_world, tmp_path, caplog):
    """configs/refit.yaml on top of a config whose checkpoint callback and early stopping monitor validation (as
    demo.yaml's do): no validation runs, nothing warns of a missing key or stops early, and the final checkpoint
    has its name."""
    import warnings

    monitored = tmp_path / "monitored.yaml"
    monitored.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                         "      init_args: {monitor: val/conv_recall@100, mode: max, save_last: true, filename: best}\n"
                         "    - class_path: lightning.pytorch.callbacks.EarlyStopping\n"
                         "      init_args: {monitor: val/conv_recall@100, mode: max, patience: 0}\n")
    args = fit_args(tiny_world, tmp_path, "--trainer.max_epochs=2")
    args = args[:2] + ["--config", str(monitored), "--config", str(ROOT / "configs" / "refit.yaml")] + args[2:]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cli = main(["fit", *args, "--data.split.val_fraction=0"])
    assert not [w for w in seen if "could not find the monitored key" in str(w.message)
                or "conditioned on metric" in str(w.message)], [str(w.message) for w in seen]
    final = tmp_path / "checkpoints" / "final.ckpt"
    assert final.exists() and torch.load(final, weights_only=True)["epoch"] == 1
    assert not any(k.startswith("val/") for k in cli.trainer.callback_metrics)


@pytest.mark.parametrize("fraction", ["0.25", "null"])
def test_a_log_whose_conversions_all_fall_after_training_stops_in_one_line(tmp_path, fraction):
    planted_world(tmp_path / "all.parquet")
    t = pq.read_table(tmp_path / "all.parquet")
    ts = t.column("ts").to_numpy()
    late = pa.compute.greater_equal(t.column("ts"), int(ts.min() + 0.95 * (ts.max() - ts.min())))
    keep = pa.compute.or_(pa.compute.not_equal(t.column("event"), "purchase"), late)
    pq.write_table(t.filter(keep), tmp_path / "events.parquet")
    r = subprocess.run([sys.executable, "-m", "retrieval", "fit", "--config", str(ROOT / "configs" / "tiny.yaml"),
                        f"--data.events={tmp_path / 'events.parquet'}", "--data.items=null", "--data.users=null",
                        "--data.item_features=[]", "--data.user_features=[]", "--model.prior_feature=null",
                        f"--data.conversion_fraction={fraction}",
                        f"--trainer.default_root_dir={tmp_path}"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    line = [ln for ln in r.stderr.splitlines() if "ERROR" in ln]
    assert len(line) == 1 and "no conversion falls in the training window" in line[0] and "'test':" in line[0]


def test_declared_heads_train_and_each_is_embedded_and_calibrated(tiny_world, tmp_path):
    """configs/heads.yaml: three heads train (each its own loss), and the index job embeds and calibrates each."""
    from index.artifact import read_manifest
    from index.build import build

    # With a logger, as the shipped configs have: Lightning merges the model's and the data's hyperparameters
    # and refuses a key both have with different values.
    cli = main(["fit", *fit_args(tiny_world, tmp_path, "--config", str(ROOT / "configs" / "heads.yaml"),
                                 "--trainer.limit_train_batches=5", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
                                 f"--trainer.logger.save_dir={tmp_path}")])
    assert list(cli.model.net.user_tower.heads) == ["conversion", "cart", "engagement"]
    m = metrics(cli)
    assert all(np.isfinite(m[f"train/loss_{h}"]) for h in ("conversion", "cart", "engagement"))
    assert cli.model.hparams.event_roles == {"conversions": {"purchase": 1.0},  # linked from data.roles
                                       "engagement": {"view": 0.5, "click": 1.0, "add_to_cart": 2.0}}
    # The cart head learns from add_to_cart alone: its multiplier row is 0 everywhere else.
    assert cli.model.event_mult[1].tolist() == [0.0, 0.0, 0.0, 1.0]
    build(next(tmp_path.rglob("last.ckpt")), tmp_path / "art", progress=False)  # under the logger's version folder
    manifest = read_manifest(tmp_path / "art")
    assert list(manifest.heads) == ["conversion", "cart", "engagement"]
    assert manifest.heads["cart"]["index"] == "index_cart.faiss" and (tmp_path / "art" / "index_cart.faiss").exists()
    cal = manifest.heads["cart"]["calibration"]
    assert cal["target"] == ["add_to_cart"] and cal["window"] == "validation" and cal["a"] > 0


def test_heads_and_shorthand_together_are_refused_in_one_line(tiny_world, tmp_path, caplog):
    with pytest.raises(SystemExit) as e:
        main(["fit", *fit_args(tiny_world, tmp_path, "--config", str(ROOT / "configs" / "heads.yaml"),
                               "--model.aux_weight=0.5", "--trainer.limit_train_batches=1")])
    assert e.value.code == 2 and "heads replaces the shorthand" in caplog.text


def test_a_prior_on_a_feature_the_data_lacks_is_refused_in_one_line(tiny_world, tmp_path, caplog):
    with pytest.raises(SystemExit) as e:
        main(["fit", *fit_args(tiny_world, tmp_path, "--data.item_features=[]", "--trainer.limit_train_batches=1")])
    assert e.value.code == 2 and "model.prior_feature: 'category' is not a categorical" in caplog.text


def test_a_fit_off_a_terminal_prints_a_line_per_epoch_with_the_validation_recall(tiny_world, tmp_path, capsys):
    main(["fit", *fit_args(tiny_world, tmp_path, "--trainer.max_epochs=2", "--trainer.enable_progress_bar=true")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(" | ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("val/conv_recall@100 " in line and "(best " in line and line.endswith(" s") for line in lines)


@pytest.mark.parametrize("interests", [1, 4])
def test_a_bf16_autocast_step_on_the_cpu_is_within_tolerance_and_its_gradients_finite(tiny_world, interests):
    """The loss's own backward passes (retrieval/losses.py) under bf16 autocast, as Lightning's bf16-mixed runs
    them on a CPU: the loss near fp32's, every gradient finite (the CUDA run is tests/retrieval/test_train_gpu.py)."""
    from retrieval.inference import to_torch
    from retrieval.model import TwoTowerModel

    c = tiny_corpus(tiny_world)
    torch.manual_seed(0)
    m = TwoTowerModel(c.item_vocab.spec(), {**c.user_vocab.spec(), "history_features": c.history_features},
                      embed_dim=8, hidden=[16], out_dim=6, interests=interests).eval()
    b = c.example_batch(c.examples(0)[:128])
    neg = np.arange(40)
    b.update(neg=c.item_batch(neg), neg_item=neg, neg_log_q=np.full(40, np.log(40 / c.n_items), np.float32))
    b = to_torch(b)
    fp32 = {k: float(v.detach()) for k, v in m._step(b).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = m._step(b)
    losses["total"].backward()
    for k, v in fp32.items():
        assert float(losses[k].detach()) == pytest.approx(v, rel=3e-2, abs=3e-2), (k, fp32, losses)
    grads = [p.grad.coalesce().values() if p.grad.is_sparse else p.grad for p in m.parameters() if p.grad is not None]
    assert len(grads) > 5 and all(torch.isfinite(g).all() for g in grads)
