"""``python -m retrieval tune``: Bayesian optimisation (Ax) of a config's weights, each trial a real fit that stops
when validation stops improving, scored on the validation window as the service answers; the test window is
never read.

    python -m retrieval tune --config configs/demo.yaml [--config MORE.yaml] [--space configs/tune.yaml]
                             [--trials 12] [--out work/tune/demo] [--refit]

The search space is a YAML (``configs/tune.yaml`` by default): dotted config paths with their ranges and scales,
the objective and the outcome constraint (the constrained metric at least ``fraction`` of the starting config's).
Trial 0 is the starting config itself (the baseline the constraint is relative to); then Ax's quasi-random
(Sobol) start and GP-based (BoTorch) trials. The Ax client is saved after every trial, so a run killed half way
continues from its finished trials. Writes to ``--out``: ``trials.md`` and ``trials.png`` (every trial's
objective, constraint, parameters and best epoch), ``best.yaml`` (the chosen overrides and epochs, to add with
``--config``) and, with ``--refit``, ``refit/checkpoints/final.ckpt``: the chosen settings fitted on everything up
to the end of the log for the chosen number of epochs, the deployable checkpoint.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from ax import Client, RangeParameterConfig
from jsonargparse import ArgumentParser
from matplotlib.figure import Figure

from retrieval.checkpoint import load_trained
from retrieval.cli import main as cli_main
from retrieval.contract import DataError
from retrieval.corpus import VALIDATION
from retrieval.data import RetrievalData
from retrieval.evaluate import evaluate, two_tower_scorer, with_popularity_fallback
from retrieval.heads import DEFAULT_WEIGHTS
from retrieval.model import TwoTowerModel

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = ROOT / "configs" / "tune.yaml"
METRICS = {f"{kind}_recall@{k}" for kind in ("conv", "eng") for k in (10, 50, 100, 500)} | {
    f"conv_ndcg@{k}" for k in (10, 50, 100, 500)}
MAX_FAILURES = 3  # trials in a row that may fail before the run stops


class TuneError(ValueError):
    """A search space or config that cannot be tuned: the message names the part, before any fit."""


@dataclass(frozen=True)
class Param:
    name: str  # a dotted config path, e.g. model.aux_weight or data.dwell_weighting.t_max
    low: float
    high: float
    log: bool = False
    kind: str = "float"  # "float" or "int"

    @property
    def key(self) -> str:
        """The name Ax knows it by (no dots)."""
        return self.name.replace(".", "__")


@dataclass(frozen=True)
class Space:
    params: list[Param]
    objective: str  # an evaluation metric, e.g. conv_recall@100 (maximised)
    constraint: str | None  # a metric that must stay at least fraction x the starting config's
    fraction: float
    initial_trials: int  # quasi-random trials before the GP takes over
    seed: int


def _field_type(cls: type, name: str) -> Any:
    """The annotated type of ``name`` in a class's __init__ or a dataclass's fields, or None."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return hints.get(name, None) if name in {f.name for f in dataclasses.fields(cls)} else None
    sig = inspect.signature(cls.__init__)
    if name not in sig.parameters:
        return None
    return typing.get_type_hints(cls.__init__).get(name, Any)


def check_name(name: str) -> None:
    """A TuneError unless ``name`` is a config path of the model or the data (nested dataclass fields too)."""
    head, *path = name.split(".")
    cls = {"model": TwoTowerModel, "data": RetrievalData}.get(head)
    if cls is None or not path:
        raise TuneError(f"tune: parameter '{name}': expected model.<name> or data.<name>[.<field>]")
    for i, part in enumerate(path):
        t = _field_type(cls, part)
        if t is None:
            raise TuneError(f"tune: parameter '{name}': {'.'.join([head, *path[:i]])} has no '{part}'")
        cls = t


def _space_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A search space YAML as a mapping, with ``extends: OTHER.yaml`` (relative to it) resolved: the other file's
    keys, then this file's, its parameters appended (one of the same name replaced). So a config's own space adds
    a parameter, e.g. the demo's prior weight, without restating the default space."""
    if path.resolve() in seen:
        raise TuneError(f"tune: search space {path}: 'extends' comes back to itself ({' -> '.join(map(str, seen))})")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TuneError(f"tune: search space {path}: cannot be read ({e})") from None
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw
    if not isinstance(raw["extends"], str):
        raise TuneError(f"tune: search space {path}: 'extends' must name one YAML file, got {raw['extends']!r}")
    base = _space_yaml(path.parent / raw["extends"], (*seen, path.resolve()))
    if not isinstance(base, dict):
        raise TuneError(f"tune: search space {path}: the space it extends, {raw['extends']}, is not a mapping")
    own = raw.get("parameters") or []
    if not isinstance(own, list):
        raise TuneError(f"tune: search space {path}: 'parameters' must be a list")
    names = {p.get("name") for p in own if isinstance(p, dict)}
    kept = [p for p in base.get("parameters") or [] if not (isinstance(p, dict) and p.get("name") in names)]
    return {**base, **{k: v for k, v in raw.items() if k != "extends"}, "parameters": kept + own}


def read_space(path: str | Path) -> Space:
    """The search space YAML, checked whole: every parameter a config path, every range non-empty (and positive
    on a log scale), the objective and constraint metrics ones evaluation reports."""
    raw = _space_yaml(Path(path))
    if not isinstance(raw, dict) or not isinstance(raw.get("parameters"), list) or not raw["parameters"]:
        raise TuneError(f"tune: search space {path}: expected a mapping with a non-empty 'parameters' list")
    params = []
    for p in raw["parameters"]:
        if not isinstance(p, dict) or set(p) - {"name", "bounds", "log", "type"} or "name" not in p:
            raise TuneError(f"tune: {path}: parameter {p!r}: expected keys name, bounds, log (optional), type "
                            f"(optional: float or int)")
        check_name(p["name"])
        b = p.get("bounds")
        if not (isinstance(b, list) and len(b) == 2 and all(isinstance(v, int | float) and math.isfinite(v) for v in b)):
            raise TuneError(f"tune: parameter '{p['name']}': bounds {b!r} are not two finite numbers")
        if not b[0] < b[1]:
            raise TuneError(f"tune: parameter '{p['name']}': empty range {b}")
        if p.get("log") and b[0] <= 0:
            raise TuneError(f"tune: parameter '{p['name']}': a log scale needs bounds above 0, got {b}")
        if p.get("type", "float") not in ("float", "int"):
            raise TuneError(f"tune: parameter '{p['name']}': type {p['type']!r} is neither float nor int")
        params.append(Param(p["name"], float(b[0]), float(b[1]), bool(p.get("log", False)), p.get("type", "float")))
    if len({p.name for p in params}) != len(params):
        raise TuneError(f"tune: {path}: a parameter is named twice")
    objective, constraint = raw.get("objective", "conv_recall@100"), raw.get("constraint", {"metric": "eng_recall@100"})
    for what, metric in (("objective", objective), ("constraint", (constraint or {}).get("metric"))):
        if metric is not None and metric not in METRICS:
            raise TuneError(f"tune: {what} '{metric}' is not a metric evaluation reports; choose from "
                            f"{sorted(METRICS)}")
    fraction = float((constraint or {}).get("fraction", 0.95))
    if not 0 < fraction <= 1:
        raise TuneError(f"tune: constraint fraction {fraction} is not in (0, 1]")
    return Space(params, objective, (constraint or {}).get("metric"), fraction, int(raw.get("initial_trials", 5)),
                 int(raw.get("seed", 0)))


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{"model.aux_weight": 0.3} -> {"model": {"aux_weight": 0.3}}: a YAML to add with --config."""
    out: dict[str, Any] = {}
    for name, v in flat.items():
        *path, last = name.split(".")
        d = out
        for part in path:
            d = d.setdefault(part, {})
        d[last] = v
    return out


def starting_values(configs: list[str], space: Space) -> dict[str, float]:
    """Each parameter's value in the configs (jsonargparse reads their model and data sections, with the
    classes' defaults filled in): the baseline trial's, inside its bounds or a TuneError."""
    merged: dict[str, Any] = {}
    for c in configs:
        try:
            _merge(merged, yaml.safe_load(Path(c).read_text()) or {})
        except (OSError, yaml.YAMLError) as e:
            raise TuneError(f"tune: config {c}: cannot be read ({e})") from None
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(TwoTowerModel, "model", skip={"item_inputs", "user_inputs", "event_roles"})
    parser.add_class_arguments(RetrievalData, "data")
    try:
        ns = parser.parse_object({k: merged.get(k, {}) for k in ("model", "data")})
    except Exception as e:  # jsonargparse's ArgumentError, or a type it cannot read
        raise TuneError(f"tune: the configs' model and data sections cannot be read: {e}") from None
    out = {}
    for p in space.params:
        v = ns.get(p.name)
        if v is None and p.name.removeprefix("model.") in DEFAULT_WEIGHTS:
            v = DEFAULT_WEIGHTS[p.name.removeprefix("model.")]  # the shorthand's default
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise TuneError(f"tune: parameter '{p.name}' is {v!r} in the configs, not a number to tune")
        if not p.low <= v <= p.high:
            raise TuneError(f"tune: parameter '{p.name}': the configs' value {v} is outside its bounds "
                            f"[{p.low:g}, {p.high:g}] (the starting config is trial 0)")
        out[p.name] = int(v) if p.kind == "int" else float(v)
    return out


def _merge(a: dict, b: dict) -> None:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _merge(a[k], v)
        else:
            a[k] = v


@dataclass
class TrialResult:
    index: int
    params: dict[str, float]
    metrics: dict[str, float]  # validation metrics as the service answers, at the best epoch
    best_epoch: int  # 0-based epoch of the best validation checkpoint
    epochs_run: int
    checkpoint: str


def fit_trial(configs: list[str], out: Path, index: int, params: dict[str, float], metrics: list[str]) -> TrialResult:
    """One real fit with ``params`` over the configs (their early stopping decides the epochs), then its best
    checkpoint scored on the validation window as the service answers (popularity for users with no earlier
    event)."""
    folder = out / f"trial_{index:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "overrides.yaml").write_text(yaml.safe_dump(nested(params), sort_keys=False))
    args = ["fit", *(a for c in configs for a in ("--config", c)), "--config", str(folder / "overrides.yaml"),
            f"--trainer.default_root_dir={folder}", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={folder}", "--trainer.logger.name=fit", "--trainer.logger.version=0"]
    cli = cli_main(args)
    ckpt = cli.trainer.checkpoint_callback
    best = Path(ckpt.best_model_path) if ckpt is not None and ckpt.best_model_path else None
    if best is None or not best.exists():
        raise TuneError(f"tune: trial {index} wrote no best checkpoint: the config's ModelCheckpoint must monitor "
                        f"validation (monitor: val/conv_recall@100)")
    trained = load_trained(best)
    corpus = trained.corpus(split=True)
    es = corpus.eval_set(VALIDATION, trained.data.get("max_eval_users"), trained.data.get("seed", 0))
    if len(es.users) == 0:
        raise TuneError("tune: no user converts in the validation window: nothing to tune on")
    scores = evaluate(with_popularity_fallback(two_tower_scorer(trained.model, corpus), corpus), corpus, es)
    epoch = int(torch.load(best, map_location="cpu", weights_only=True)["epoch"])
    result = TrialResult(index, params, {m: float(scores[m][0]) for m in metrics}, epoch,
                         cli.trainer.current_epoch, str(best))
    (folder / "result.json").write_text(json.dumps(dataclasses.asdict(result), indent=1))
    return result


def ax_name(metric: str) -> str:
    """A metric as Ax's expressions read it: conv_recall@100 -> conv_recall_100."""
    return metric.replace("@", "_")


def make_client(space: Space, baseline_metric: float | None) -> Client:
    client = Client()
    client.configure_experiment(
        parameters=[RangeParameterConfig(name=p.key, bounds=(p.low, p.high), parameter_type=p.kind,
                                         scaling="log" if p.log else "linear") for p in space.params],
        name="retrieval-tune")
    constraints = None
    if space.constraint and baseline_metric is not None:
        constraints = [f"{ax_name(space.constraint)} >= {space.fraction * baseline_metric:.6f}"]
    client.configure_optimization(objective=ax_name(space.objective), outcome_constraints=constraints)
    # Sobol for the first trials (the baseline counts), then BoTorch's GP.
    client.configure_generation_strategy(initialization_budget=space.initial_trials,
                                         initialization_random_seed=space.seed)
    return client


def table_rows(results: list[TrialResult], space: Space, floor: float | None) -> tuple[list[str], list[list[str]]]:
    header = ["trial", space.objective, *([space.constraint] if space.constraint else []), "feasible",
              "best epoch", *(p.name for p in space.params)]
    rows = []
    for r in results:
        ok = floor is None or r.metrics[space.constraint] >= floor
        rows.append([str(r.index), f"{r.metrics[space.objective]:.4f}",
                     *([f"{r.metrics[space.constraint]:.4f}"] if space.constraint else []), "yes" if ok else "no",
                     str(r.best_epoch + 1), *(f"{r.params[p.name]:.4g}" for p in space.params)])
    return header, rows


def report(out: Path, results: list[TrialResult], space: Space, floor: float | None) -> TrialResult:
    """trials.md, trials.png and best.yaml; returns the chosen trial (the best feasible objective)."""
    header, rows = table_rows(results, space, floor)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]
    feasible = [r for r in results if floor is None or r.metrics[space.constraint] >= floor]
    best = max(feasible or results, key=lambda r: r.metrics[space.objective])
    note = (f"\nChosen: trial {best.index} ({space.objective} {best.metrics[space.objective]:.4f} on validation"
            + (f"; constraint {space.constraint} >= {floor:.4f}, {space.fraction} of trial 0's" if floor else "")
            + (")" if feasible else "; no trial met the constraint, the best objective is shown)"))
    (out / "trials.md").write_text("\n".join(md) + "\n" + note + "\n")
    overrides = {**nested(best.params)}
    overrides.setdefault("trainer", {})["max_epochs"] = best.best_epoch + 1
    (out / "best.yaml").write_text(f"# python -m retrieval tune: trial {best.index} of {len(results)}, "
                                   f"{space.objective} {best.metrics[space.objective]:.4f} (validation); add with "
                                   f"--config\n" + yaml.safe_dump(overrides, sort_keys=False))
    fig = Figure(figsize=(6, 4))  # no pyplot: no backend or global state, a file only
    ax = fig.subplots()
    xs = [r.index for r in results]
    ys = [r.metrics[space.objective] for r in results]
    colours = ["tab:blue" if floor is None or r.metrics[space.constraint] >= floor else "tab:red" for r in results]
    ax.scatter(xs, ys, c=colours)
    ax.plot(xs, [max(ys[: i + 1]) for i in range(len(ys))], color="grey", lw=0.8, label="best so far")
    ax.set(xlabel="trial (0 = the starting config)", ylabel=f"validation {space.objective}",
           title="tuning trials (red: constraint not met)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "trials.png", dpi=110)
    return best


def tune(configs: list[str], space_path: str | Path, trials: int, out: Path) -> TrialResult:
    """Run (or continue) a tuning run of ``trials`` fits, trial 0 the starting config; returns the chosen one."""
    space = read_space(space_path)
    start = starting_values(configs, space)
    metrics = [space.objective, *([space.constraint] if space.constraint else [])]
    out.mkdir(parents=True, exist_ok=True)
    state = out / "ax.json"
    results = [TrialResult(**json.loads(p.read_text())) for p in sorted(out.glob("trial_*/result.json"))]
    by_index = {r.index: r for r in results}
    if 0 not in by_index:
        by_index[0] = fit_trial(configs, out, 0, start, metrics)
    base = by_index[0]
    floor = space.fraction * base.metrics[space.constraint] if space.constraint else None
    if state.exists():
        client = Client.load_from_json_file(str(state))
        log.info("tune: continuing %s: %d finished trials", out, len(by_index))
    else:
        client = make_client(space, base.metrics.get(space.constraint) if space.constraint else None)
        i = client.attach_baseline({p.key: start[p.name] for p in space.params})
        client.complete_trial(i, {ax_name(m): base.metrics[m] for m in metrics})
        client.save_to_json_file(str(state))
    known = set(client.summarize()["trial_index"]) if len(by_index) > 1 else {0}
    for index, r in sorted(by_index.items()):  # finished fits the saved client missed (killed before its save)
        if index not in known:
            j = client.attach_trial({p.key: r.params[p.name] for p in space.params})
            client.complete_trial(j, {ax_name(m): r.metrics[m] for m in metrics})
    failures = 0
    while len(by_index) < trials:
        if failures >= MAX_FAILURES:
            raise TuneError(f"tune: {failures} trials in a row failed (the log says why); stopping")
        (index, raw), = client.get_next_trials(max_trials=1).items()
        params = {p.name: raw[p.key] for p in space.params}
        log.info("tune: trial %d of %d: %s", index, trials - 1, params)
        try:
            r = fit_trial(configs, out, index, params, metrics)
        except (DataError, ValueError) as e:  # a setting the model refuses (e.g. a weight it cannot train with)
            log.warning("tune: trial %d failed: %s", index, e)
            client.mark_trial_failed(index, str(e))
            client.save_to_json_file(str(state))
            failures += 1
            continue
        failures = 0
        client.complete_trial(index, {ax_name(m): r.metrics[m] for m in metrics})
        client.save_to_json_file(str(state))
        by_index[index] = r
        report(out, sorted(by_index.values(), key=lambda t: t.index), space, floor)
    return report(out, sorted(by_index.values(), key=lambda t: t.index), space, floor)


def refit(configs: list[str], out: Path) -> Path:
    """The chosen settings fitted on every event up to the end of the log, for the chosen epochs: the deployable
    checkpoint (no validation or test window is left)."""
    args = ["fit", *(a for c in configs for a in ("--config", c)), "--config", str(out / "best.yaml"),
            "--config", str(ROOT / "configs" / "refit.yaml"), "--data.split.val_fraction=0",
            "--data.split.test_fraction=0", f"--trainer.default_root_dir={out / 'refit'}",
            "--trainer.logger=false"]
    cli_main(args)
    final = out / "refit" / "checkpoints" / "final.ckpt"
    if not final.exists():
        raise TuneError(f"tune: the refit wrote no {final}")
    return final
