"""python -m retrieval tune: bad search spaces refused before any fit, trials that are real early-stopped fits
scored on validation, a run that continues from its finished trials, and the chosen overrides refit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, TINY

from retrieval.tune import TuneError, read_space, starting_values, tune
from retrieval.tune_cli import main

DATA = Path(__file__).parent / "data"
SPACE = DATA / "space_tiny.yaml"


def configs(world: Path, tmp: Path) -> list[str]:
    paths = tmp / "paths.yaml"
    paths.write_text(yaml.safe_dump({"data": {"events": str(world / "events.parquet"),
                                              "items": str(world / "items.parquet"),
                                              "users": str(world / "users.parquet")}}))
    return [str(TINY), str(DATA / "tune_tiny.yaml"), str(paths)]


def config_args(cfgs: list[str]) -> list[str]:
    return [a for c in cfgs for a in ("--config", c)]


def write_space(tmp: Path, edit) -> Path:
    raw = yaml.safe_load(SPACE.read_text())
    edit(raw)
    p = tmp / "space.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["parameters"].append({"name": "model.dropout_rate", "bounds": [0, 1]}), "model has no 'dropout_rate'"),
    (lambda s: s["parameters"].append({"name": "data.dwell_weighting.tmax", "bounds": [1, 2]}),
     "data.dwell_weighting has no 'tmax'"),
    (lambda s: s["parameters"].append({"name": "trainer.max_epochs", "bounds": [1, 2]}), "expected model.<name>"),
    (lambda s: s["parameters"].append({"name": "model.lr", "bounds": [0.01, 0.01]}), "empty range"),
    (lambda s: s["parameters"].append({"name": "model.lr", "bounds": [0, 0.01], "log": True}), "log scale"),
    (lambda s: s.update(constraint={"metric": "eng_recall@1000"}), "constraint 'eng_recall@1000' is not a metric"),
    (lambda s: s.update(objective="val/conv_recall@100"), "objective 'val/conv_recall@100' is not a metric"),
])
def test_a_bad_search_space_is_named_before_any_fit(tmp_path, tiny_world, edit, message, caplog):
    with pytest.raises(SystemExit) as e:
        main([*config_args(configs(tiny_world, tmp_path)), "--space", str(write_space(tmp_path, edit)), "--trials",
              "2", "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and message in caplog.text
    assert not (tmp_path / "run").exists()  # nothing was fitted


def test_starting_values_come_from_the_configs_and_must_lie_in_range(tmp_path, tiny_world):
    space = read_space(SPACE)
    start = starting_values(configs(tiny_world, tmp_path), space)
    assert start == {"model.aux_weight": 0.5, "model.temperature": 0.05, "data.dwell_weighting.t_max": 120.0}
    narrow = read_space(write_space(tmp_path, lambda s: s["parameters"][0].update(bounds=[0.6, 1.0])))
    with pytest.raises(TuneError, match="the configs' value 0.5 is outside its bounds"):
        starting_values(configs(tiny_world, tmp_path), narrow)


def test_a_space_extends_another_adding_and_replacing_parameters(tmp_path):
    (tmp_path / "base.yaml").write_text(SPACE.read_text())
    (tmp_path / "more.yaml").write_text(yaml.safe_dump({"extends": "base.yaml", "seed": 7, "parameters": [
        {"name": "model.prior_weight", "bounds": [0.1, 2.0], "log": True},
        {"name": "model.temperature", "bounds": [0.01, 0.1]}]}))
    base, more = read_space(tmp_path / "base.yaml"), read_space(tmp_path / "more.yaml")
    assert [p.name for p in more.params] == [*(p.name for p in base.params if p.name != "model.temperature"),
                                              "model.prior_weight", "model.temperature"]
    assert more.params[-1].low == 0.01 and not more.params[-1].log  # the extending file's range wins
    assert (more.seed, more.objective, more.constraint) == (7, base.objective, base.constraint)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\nparameters: []\n")
    with pytest.raises(TuneError, match="comes back to itself"):
        read_space(tmp_path / "loop.yaml")
    (tmp_path / "lost.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(TuneError, match="nowhere.yaml: cannot be read"):
        read_space(tmp_path / "lost.yaml")


def test_the_demo_space_is_the_default_and_the_prior_weight_around_the_demo_config():
    default, demo = read_space(ROOT / "configs" / "tune.yaml"), read_space(ROOT / "configs" / "tune_demo.yaml")
    assert demo.params == [*default.params, demo.params[-1]] and demo.params[-1].name == "model.prior_weight"
    start = starting_values([str(ROOT / "configs" / "demo.yaml")], demo)
    assert start["model.prior_weight"] == 0.6 and len(start) == len(demo.params)


def test_tuning_runs_real_trials_continues_after_a_kill_and_refits(tmp_path, tiny_world):
    out = tmp_path / "run"
    cfg = configs(tiny_world, tmp_path)
    tune(cfg, SPACE, 2, out)  # trial 0 (the starting config) and one Sobol trial
    first = {p.parent.name: p.stat().st_mtime for p in out.glob("trial_*/result.json")}
    assert sorted(first) == ["trial_000", "trial_001"]
    r0 = json.loads((out / "trial_000" / "result.json").read_text())
    assert r0["params"] == {"model.aux_weight": 0.5, "model.temperature": 0.05, "data.dwell_weighting.t_max": 120.0}
    assert 0 <= r0["best_epoch"] < 3 and set(r0["metrics"]) == {"conv_recall@100", "eng_recall@100"}
    trial1 = yaml.safe_load((out / "trial_001" / "overrides.yaml").read_text())
    assert set(trial1) == {"model", "data"} and trial1["model"]["aux_weight"] != 0.5
    # A second run with a larger budget continues: the finished trials are not fitted again.
    tune(cfg, SPACE, 3, out)
    assert {p.parent.name: p.stat().st_mtime for p in out.glob("trial_*/result.json") if p.parent.name in first} == first
    assert (out / "trial_002" / "result.json").exists()
    table = (out / "trials.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| trial")]
    assert len(rows) == 3 and "Chosen: trial" in table and (out / "trials.png").stat().st_size > 0
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert 1 <= best["trainer"]["max_epochs"] <= 3 and "aux_weight" in best["model"]
    # --refit: the chosen settings on the whole log, for the chosen epochs.
    main([*config_args(cfg), "--space", str(SPACE), "--trials", "3", "--out", str(out), "--refit"])
    assert (out / "refit" / "checkpoints" / "final.ckpt").exists()


@pytest.mark.parametrize("scale", ["probability", "score"])
def test_utility_weights_are_tuned_without_fitting(trained, tmp_path, scale):
    """Each trial an evaluation of one trained model; trial 0 (conversion alone) scores as the model itself, on
    either scale the service weighs."""
    from retrieval.checkpoint import load_trained
    from retrieval.evaluate import evaluate, two_tower_scorer, with_popularity_fallback
    from retrieval.tune_utility import tune_utility

    before = set(tmp_path.rglob("*.ckpt"))
    utility = tune_utility(trained, 3, tmp_path / "u", scale=scale)
    assert utility.startswith("conversion:1") and not set(tmp_path.rglob("*.ckpt")) - before  # nothing fitted
    t = load_trained(trained)
    corpus = t.corpus(split=True)
    es = corpus.eval_set(1, t.data.get("max_eval_users"), t.data.get("seed", 0))
    own = evaluate(with_popularity_fallback(two_tower_scorer(t.model, corpus), corpus), corpus, es)
    table = (tmp_path / "u" / "trials.md").read_text()
    row0 = next(line for line in table.splitlines() if line.startswith("| 0 |"))
    assert row0.split(" | ")[1] == f"{own['conv_recall@100'][0]:.4f}"
    assert (tmp_path / "u" / "best_utility.txt").read_text().strip() == utility
    assert f"utility {utility} on the {scale} scale" in table
