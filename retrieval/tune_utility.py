"""Serving utility weights tuned on one trained model without retraining (``python -m retrieval tune --utility
CKPT``): the same Ax loop as retrieval/tune.py, each trial an evaluation only."""

from __future__ import annotations

import logging
from pathlib import Path

from index.calibrate import calibrate_heads
from retrieval.calibration import Platt
from retrieval.checkpoint import load_trained
from retrieval.corpus import VALIDATION
from retrieval.evaluate import evaluate, utility_scorer, with_popularity_fallback
from retrieval.heads import SERVED, heads_of, role_spec
from retrieval.tune import Param, Space, TrialResult, TuneError, ax_name, make_client, table_rows
from retrieval.utility import PROBABILITY, SCALES, SCORE, raw_score

log = logging.getLogger(__name__)


def tune_utility(checkpoint: str | Path, trials: int, out: Path, fraction: float = 0.95,
                 objective: str = "conv_recall@100", constraint: str = "eng_recall@100", seed: int = 0,
                 scale: str = PROBABILITY) -> str:
    """Serving utility weights of one trained model, without retraining: each trial an evaluation only. The
    weights of the heads besides conversion (conversion's is 1) in [0, 1]; trial 0 is conversion alone; every
    trial scored on the validation window as the service answers. scale: what the weights weigh, as the
    service's ``utility_scale``: "probability", the heads calibrated on the validation window as the index job
    calibrates them; "score", the heads' raw served scores (no calibration needed). Returns the chosen utility
    (``conversion:1,engagement:w``), also in best_utility.txt: declare it at build (``python -m index build
    --preset NAME=...``) or send it as ``utility=``, with ``utility_scale=`` the scale tuned."""
    if scale not in SCALES:
        raise TuneError(f"tune: utility scale {scale!r}: expected one of {list(SCALES)}")
    trained = load_trained(checkpoint)
    corpus = trained.corpus(split=True)
    heads = [h.name for h in heads_of(trained.hparams)]
    if scale == SCORE:
        calib = dict.fromkeys(heads, raw_score)
    else:
        fitted = calibrate_heads(trained.model, corpus, heads_of(trained.hparams), role_spec(trained.config.roles))
        calib = {h: Platt.from_dict(c) for h, c in fitted.items() if c}
    others = [h for h in calib if h != SERVED]
    if SERVED not in calib or not others:
        raise TuneError(f"tune: checkpoint {checkpoint}: a utility on calibrated probabilities needs the "
                        f"conversion head and another, calibrated on validation; calibrated: {sorted(calib)}"
                        if scale == PROBABILITY else
                        f"tune: checkpoint {checkpoint}: a utility needs the conversion head and another; the "
                        f"model has {heads}")
    es = corpus.eval_set(VALIDATION, trained.data.get("max_eval_users"), trained.data.get("seed", 0))
    if len(es.users) == 0:
        raise TuneError("tune: no user converts in the validation window: nothing to tune on")
    space = Space([Param(f"utility.{h}", 0.0, 1.0) for h in others], objective, constraint, fraction,
                  min(5, trials), seed)
    out.mkdir(parents=True, exist_ok=True)

    def score(params: dict[str, float]) -> dict[str, float]:
        weights = {SERVED: 1.0, **{h: params[f"utility.{h}"] for h in others if params[f"utility.{h}"] > 0}}
        s = evaluate(with_popularity_fallback(utility_scorer(trained.model, corpus, weights, calib), corpus), corpus, es)
        return {m: float(s[m][0]) for m in (objective, constraint)}

    start = {f"utility.{h}": 0.0 for h in others}
    base = score(start)
    results = [TrialResult(0, start, base, -1, 0, str(checkpoint))]
    client = make_client(space, base[constraint])
    i = client.attach_baseline({p.key: 0.0 for p in space.params})
    client.complete_trial(i, {ax_name(m): v for m, v in base.items()})
    while len(results) < trials:
        (index, raw), = client.get_next_trials(max_trials=1).items()
        params = {p.name: float(raw[p.key]) for p in space.params}
        metrics = score(params)
        client.complete_trial(index, {ax_name(m): v for m, v in metrics.items()})
        results.append(TrialResult(index, params, metrics, -1, 0, str(checkpoint)))
        log.info("tune: utility trial %d: %s -> %s", index, params, metrics)
    floor = fraction * base[constraint]
    header, rows = table_rows(results, space, floor)
    feasible = [r for r in results if r.metrics[constraint] >= floor]
    best = max(feasible, key=lambda r: r.metrics[objective])  # trial 0 meets the constraint by definition
    utility = ",".join([f"{SERVED}:1", *(f"{h}:{best.params[f'utility.{h}']:.4g}" for h in others
                                          if best.params[f"utility.{h}"] > 0)])
    md = ["| " + " | ".join(h for i, h in enumerate(header) if i != 4) + " |", "|" + "---|" * (len(header) - 1),
          *("| " + " | ".join(c for i, c in enumerate(r) if i != 4) + " |" for r in rows)]
    (out / "trials.md").write_text("\n".join(md) + f"\n\nChosen: trial {best.index}, utility {utility} on the "
                                   f"{scale} scale ({objective} {best.metrics[objective]:.4f} on validation)\n")
    (out / "best_utility.txt").write_text(utility + "\n")
    return utility
