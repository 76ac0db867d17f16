"""Offline evaluation on a temporal split: recall and NDCG of future conversions, slices, coverage, baselines.

A *scorer* maps a batch of evaluation users to scores over the whole catalogue ([B, N]); the two-tower model,
popularity and ALS are scorers, so every method is measured by the same code on the same users.

    python -m retrieval.evaluate --checkpoint CKPT [--window test|validation] [--baselines popularity,als]
                                 [--index HNSW32] [--max-users N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass

import numpy as np

from index.faiss_index import (
    FactoryError,
    apply_search_params,
    build_index,
    check_factory,
    default_search_params,
)
from retrieval.answer import search_width, served_answer
from retrieval.calibration import Platt
from retrieval.checkpoint import CheckpointError, load_trained
from retrieval.contract import DataError
from retrieval.corpus import Corpus, EvalSet
from retrieval.embed import UserHistory, embed_items, embed_items_heads, user_state_scores, user_states
from retrieval.events import CONVERSION, ENGAGEMENT
from retrieval.inference import TwoTower
from retrieval.live_eval import als_foldin_scorer, cooccurrence_scorer, live_set, live_two_tower_scorer
from retrieval.metrics import recall, target_ranks
from retrieval.scorers import Scorer, fit_als, popularity_scorer
from retrieval.utility import utility_of

log = logging.getLogger(__name__)

KS = (10, 50, 100, 500)


def two_tower_scorer(model: TwoTower, corpus: Corpus) -> Scorer:
    """Exact served scores: inner product of the embeddings plus the repeat term."""
    model.eval()
    items = embed_items(model, corpus, progress=False)

    def score(i: np.ndarray, es: EvalSet) -> np.ndarray:
        return user_state_scores(model, corpus, es.users[i], es.end[i], np.full(len(i), es.now, np.int64), items)

    return score


def with_popularity_fallback(scorer: Scorer, corpus: Corpus) -> Scorer:
    """What the service answers: a user with no event before the window is not in an artifact built then, so
    the service gives them conversion popularity (serve/store.py, ``fallback: "popular"``); everyone else gets
    ``scorer``'s scores. Scoring the model's empty-history query for them would measure an answer nobody serves."""

    popular: dict[int, Scorer] = {}  # by window start: counted once, not again for every batch

    def score(i: np.ndarray, es: EvalSet) -> np.ndarray:
        s = scorer(i, es)
        unknown = es.end[i] == corpus.user_start[es.users[i]]  # [B] no event before the window
        if unknown.any():
            s = np.array(s, np.float32)  # a writable copy (a scorer may return a broadcast view)
            if es.now not in popular:
                popular[es.now] = popularity_scorer(corpus, es.now)
            s[unknown] = popular[es.now](i[unknown], es)
        return s

    return score


def eval_user_states(model: TwoTower, corpus: Corpus, i: np.ndarray, es: EvalSet,
                     items: np.ndarray) -> tuple[np.ndarray, UserHistory]:
    """Served vectors [B, D] of evaluation users (positions ``i`` of the eval set) at the window's start, and
    their history items with full scores (what the service merges into an index's answer)."""
    return user_states(model, corpus, es.users[i], es.end[i], np.full(len(i), es.now, np.int64), items)


def index_scorer(model: TwoTower, corpus: Corpus, factory: str = "HNSW32") -> Scorer:
    """Scores that keep only what the service answers from a FAISS index over the item vectors (the index's
    results merged with the user's history items by the service's own retrieval.answer.served_answer): with
    exact scores, the recall an index loses."""
    model.eval()
    vecs = embed_items(model, corpus, progress=False)
    index = build_index(vecs, factory)
    apply_search_params(index, default_search_params(factory))
    k = min(max(KS), corpus.n_items)

    def score(i: np.ndarray, es: EvalSet) -> np.ndarray:
        users, hist = eval_user_states(model, corpus, i, es, vecs)  # [B, K, D]
        want = search_width(k, int(np.diff(hist.offsets).max(initial=0)), 0, corpus.n_items)
        s, rows = index.search(users.reshape(-1, vecs.shape[1]), want)
        s, rows = s.reshape(len(i), -1, want), rows.reshape(len(i), -1, want)
        out = np.full((len(i), corpus.n_items), -np.inf, np.float32)
        for b in range(len(i)):
            r, v = served_answer(rows[b], s[b], *hist.of(b), k)
            out[b, r] = v
        return out

    return score


def utility_scorer(model: TwoTower, corpus: Corpus, weights: dict[str, float], calib: dict[str, Platt]) -> Scorer:
    """Utility scores over the whole catalogue (each weighted head's exact served score, calibrated, weighted:
    retrieval.utility.utility_of): what the service's utility answer is through a Flat index, which is exact
    against this brute force (tests/serve/test_utility_service.py)."""
    model.eval()
    items = embed_items_heads(model, corpus, progress=False, heads=list(weights))  # one run of the item tower

    def score(i: np.ndarray, es: EvalSet) -> np.ndarray:
        now = np.full(len(i), es.now, np.int64)
        full = {h: user_state_scores(model, corpus, es.users[i], es.end[i], now, items[h], h) for h in weights}
        return utility_of(full, weights, calib).astype(np.float32)

    return score


def als_scorer(corpus: Corpus, now: int, dual: bool, factors: int = 64, iterations: int = 20,
               regularization: float = 0.05, alpha: float = 20.0, seed: int = 0) -> Scorer:
    """implicit's ALS on the user x item matrix before the window: conversions only, or conversions plus
    dwell-weighted engagement (each event's weight). Users ALS never saw fall back to conversion popularity."""
    model, conf = fit_als(corpus, now, dual, factors, iterations, regularization, alpha, seed)
    uf, itf = np.asarray(model.user_factors), np.asarray(model.item_factors)
    seen = np.asarray(conf.sum(1)).ravel() > 0
    pop = corpus.item_counts(CONVERSION, now).astype(np.float32)

    def score(i: np.ndarray, es: EvalSet) -> np.ndarray:
        users = es.users[i]
        s = uf[users] @ itf.T
        s[~seen[users]] = pop
        return s

    return score


@dataclass
class PerUser:
    """Per evaluation user: each target's rank in the top K_max (K_max = not found), and the top 100."""

    conv_ranks: list[np.ndarray]
    eng_ranks: list[np.ndarray]
    top100: np.ndarray  # [U, 100] retrieved catalogue rows


def rank_targets(scorer: Scorer, es: EvalSet, n_items: int, batch: int = 512, kmax: int = max(KS)) -> PerUser:
    kmax = min(kmax, n_items)
    conv_ranks, eng_ranks, tops = [], [], []
    for lo in range(0, len(es.users), batch):
        i = np.arange(lo, min(lo + batch, len(es.users)))
        s = scorer(i, es)
        part = np.argpartition(-s, kmax - 1, axis=1)[:, :kmax]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, 1)  # [B, kmax] best first
        tops.append(top[:, :100])
        for b, j in enumerate(i):
            conv_ranks.append(target_ranks(top[b], es.conversions[j]))
            eng_ranks.append(target_ranks(top[b], es.engagement[j]))
    return PerUser(conv_ranks=conv_ranks, eng_ranks=eng_ranks,
                   top100=np.concatenate(tops) if tops else np.zeros((0, 100), np.int64))


def ndcg(ranks: list[np.ndarray], k: int) -> np.ndarray:
    out = np.full(len(ranks), np.nan)
    disc = 1.0 / np.log2(np.arange(k) + 2)
    for u, r in enumerate(ranks):
        if len(r):
            out[u] = disc[r[r < k]].sum() / disc[: min(len(r), k)].sum()
    return out


def bootstrap(values: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float, float, int]:
    """Mean over users with a 95% bootstrap interval (users resampled), and the number of users."""
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan"), 0
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n, len(v)))].mean(1)
    return float(v.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)), len(v)


def evaluate(scorer: Scorer, corpus: Corpus, es: EvalSet, ks: tuple[int, ...] = KS,
             short_history: int = 5) -> dict[str, tuple[float, float, float, int]]:
    """Every metric of the report for one method: {name: (mean, ci_low, ci_high, users)}."""
    return summarize(rank_targets(scorer, es, corpus.n_items), corpus, es, ks, short_history)


def paired_difference(a: np.ndarray, b: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float, float, int]:
    """Mean of a - b over users with both values, with a 95% interval from resampling users (paired: the same
    users for both methods, so the interval is tighter than two separate intervals suggest)."""
    both = ~(np.isnan(a) | np.isnan(b))
    return bootstrap((a - b)[both], n, seed)


def conversion_slices(corpus: Corpus, es: EvalSet) -> dict[str, list[np.ndarray]]:
    """Per slice, per evaluation user: which of their target conversions fall in it (masks over es.conversions).

    cold_item: no event before the window; head / torso / tail: the items behind the top 50 %, next 30 % and
    last 20 % of interactions before it; engaged_before / new_to_user: the user engaged with (or bought) the
    item before the window, or not. Depends only on the data, so one call serves every method."""
    train_pop = corpus.item_counts(CONVERSION, es.now) + corpus.item_counts(ENGAGEMENT, es.now)
    order = np.argsort(-train_pop, kind="stable")
    share = np.cumsum(train_pop[order]) / max(train_pop.sum(), 1)
    band = np.empty(corpus.n_items, np.int8)  # 0 head, 1 torso, 2 tail
    band[order] = np.where(share <= 0.5, 0, np.where(share <= 0.8, 1, 2))
    before = [np.isin(rows, corpus.event_row[corpus.user_start[u]:e])
              for rows, u, e in zip(es.conversions, es.users, es.end, strict=True)]
    out = {"cold_item": [train_pop[r] == 0 for r in es.conversions]}
    for b, name in enumerate(("head", "torso", "tail")):
        out[name] = [band[r] == b for r in es.conversions]
    out["engaged_before"], out["new_to_user"] = before, [~b for b in before]
    return out


def targets_behind(corpus: Corpus, es: EvalSet, slices: dict[str, list[np.ndarray]], ks: tuple[int, ...] = KS,
                   short_history: int = 5) -> dict[str, int]:
    """How many targets (conversions; engagements for eng_*) stand behind each metric of :func:`summarize`."""
    n_hist = es.end - corpus.user_start[es.users]
    conv = np.array([len(t) for t in es.conversions])
    eng = sum(len(t) for t in es.engagement)
    out = {}
    for k in ks:
        out[f"conv_recall@{k}"] = out[f"conv_ndcg@{k}"] = int(conv.sum())
        out[f"eng_recall@{k}"] = eng
    for name, masks in slices.items():
        out[f"{name}_conv_recall@100"] = int(sum(m.sum() for m in masks))
    out[f"short_history(<{short_history})_conv_recall@100"] = int(conv[n_hist < short_history].sum())
    out["with_history_conv_recall@100"] = int(conv[n_hist > 0].sum())
    return out


def summarize(pu: PerUser, corpus: Corpus, es: EvalSet, ks: tuple[int, ...] = KS, short_history: int = 5,
              slices: dict[str, list[np.ndarray]] | None = None) -> dict[str, tuple[float, float, float, int]]:
    """The report's metrics from ranked targets (see :func:`evaluate`); slices: conversion_slices(corpus, es)."""
    slices = slices if slices is not None else conversion_slices(corpus, es)
    n_hist = es.end - corpus.user_start[es.users]
    out = {}
    for k in ks:
        out[f"conv_recall@{k}"] = bootstrap(recall(pu.conv_ranks, k))
        out[f"conv_ndcg@{k}"] = bootstrap(ndcg(pu.conv_ranks, k))
        out[f"eng_recall@{k}"] = bootstrap(recall(pu.eng_ranks, k))
    k = 100
    for name, masks in slices.items():
        out[f"{name}_conv_recall@100"] = bootstrap(recall(pu.conv_ranks, k, masks))
    short = recall(pu.conv_ranks, k)
    short[n_hist >= short_history] = np.nan
    out[f"short_history(<{short_history})_conv_recall@100"] = bootstrap(short)
    known = recall(pu.conv_ranks, k)
    known[n_hist == 0] = np.nan  # users with an earlier event: the ones a model can personalise for
    out["with_history_conv_recall@100"] = bootstrap(known)
    distinct = np.unique(pu.top100)
    out["coverage@100"] = (len(distinct) / corpus.n_items, np.nan, np.nan, len(es.users))
    freq = np.bincount(pu.top100.ravel(), minlength=corpus.n_items)
    top1 = np.sort(freq)[::-1][: max(1, corpus.n_items // 100)].sum() / max(freq.sum(), 1)
    out["top1%_items_share_of_slots"] = (float(top1), np.nan, np.nan, len(es.users))
    return out


def _scorers(trained, corpus: Corpus, es: EvalSet, baselines: list[str], index: str | None) -> dict[str, Scorer]:
    """The methods to compare: the model as the service answers (users with no earlier event get conversion
    popularity), optionally through a FAISS index, and the baselines."""
    exact = two_tower_scorer(trained.model, corpus)
    out = {"two-tower": with_popularity_fallback(exact, corpus)}
    if index:
        out[f"two-tower, {index} index"] = with_popularity_fallback(index_scorer(trained.model, corpus, index), corpus)
    if "popularity" in baselines:
        out["popularity (conversions)"] = popularity_scorer(corpus, es.now)
        out["popularity (engagement)"] = popularity_scorer(corpus, es.now, ENGAGEMENT)
    if "als" in baselines:
        out["ALS (conversions)"] = als_scorer(corpus, es.now, dual=False)
        out["ALS (dual-weighted)"] = als_scorer(corpus, es.now, dual=True)
    return out


def _live_scorers(trained, corpus: Corpus, es: EvalSet, baselines: list[str]) -> dict[str, Scorer]:
    """The live protocol's methods (retrieval/live_eval.py), each given the same fresh events; the model's
    batch answer (its state at the window's start) beside its live one."""
    batch = with_popularity_fallback(two_tower_scorer(trained.model, corpus), corpus)
    out = {"two-tower": live_two_tower_scorer(trained.model, corpus, batch), "two-tower, batch state": batch,
           "two-tower, fresh events only (as new users)": live_two_tower_scorer(
               trained.model, corpus, popularity_scorer(corpus, es.now), as_new_users=True)}
    if "popularity" in baselines:
        out["popularity (conversions)"] = popularity_scorer(corpus, es.now)
    out["item co-occurrence"] = cooccurrence_scorer(corpus, es.now)
    if "als" in baselines:
        out["ALS (dual-weighted), fresh events folded in"] = als_foldin_scorer(corpus, es.now)
    return out


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths, strict=True)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def fmt_interval(v: tuple[float, float, float, int]) -> str:
    """A metric as the reports show it: mean [95% interval], the mean alone where there is no interval."""
    m, lo, hi, _ = v
    return "–" if np.isnan(m) else f"{m:.3f}" if np.isnan(lo) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a positive integer")
    return int(raw)


def main(argv: list[str] | None = None) -> dict:
    """Score a checkpoint on its split's test (or validation) window; prints a table, returns the results."""
    p = argparse.ArgumentParser(prog="python -m retrieval.evaluate", description=(
        "Conversion recall / NDCG at K = 10, 50, 100, 500 of a trained checkpoint on its temporal split, with 95% "
        "bootstrap intervals over users, slices and coverage, against baselines on the same users."))
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `python -m retrieval fit`")
    p.add_argument("--window", choices=["test", "validation"], default="test")
    p.add_argument("--baselines", default="popularity",
                   help="comma-separated: popularity, als (implicit's ALS; the bench extra), or none")
    p.add_argument("--index", metavar="FACTORY", default=None,
                   help="also score the answers of a FAISS index (e.g. HNSW32): the recall the index loses")
    p.add_argument("--max-users", type=_positive, default=None, help="a seeded sample of the window's users")
    p.add_argument("--protocol", choices=["batch", "live"], default="batch", help=(
        "batch: every user at the window's start; live: at their first conversion in the window, with the "
        "window's events before it as fresh events, as the live service answers"))
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    baselines = [] if a.baselines == "none" else a.baselines.split(",")
    unknown = set(baselines) - {"popularity", "als"}
    if unknown:
        p.error(f"--baselines: unknown {sorted(unknown)}; choose from popularity, als, none")
    logging.basicConfig(level=logging.WARNING)
    try:
        trained = load_trained(a.checkpoint)
        corpus = trained.corpus(split=True)
        if a.index:
            check_factory(a.index, trained.model.embedding_dim)  # before any scoring
        window = 2 if a.window == "test" else 1
        es = corpus.eval_set(window, a.max_users) if a.protocol == "batch" else live_set(corpus, window, a.max_users)
        if len(es.users) == 0:
            raise DataError(f"evaluate: no conversions in the {a.window} window of {trained.data['events']}")
        scorers = (_scorers(trained, corpus, es, baselines, a.index) if a.protocol == "batch"
                   else _live_scorers(trained, corpus, es, baselines))
    except (CheckpointError, DataError, FactoryError) as e:
        sys.exit(f"error: {e}")
    except ImportError as e:
        sys.exit(f"error: {e.name} is missing: ALS needs the bench extra (pip install -e '.[bench]')")
    slices = conversion_slices(corpus, es)
    results, per_user = {}, {}
    for name, scorer in scorers.items():
        pu = rank_targets(scorer, es, corpus.n_items)
        results[name] = summarize(pu, corpus, es, slices=slices)
        per_user[name] = recall(pu.conv_ranks, 100)
    for name, r in results.items():  # paired over the same users: beyond noise where the interval excludes 0
        r["two_tower_minus_this@100"] = paired_difference(per_user["two-tower"], per_user[name])
    behind = targets_behind(corpus, es, slices)
    metrics = list(results["two-tower"])
    rows = [[m, str(results["two-tower"][m][3]), str(behind.get(m, "-")), *(fmt_interval(results[n][m]) for n in results)]
            for m in metrics]  # users and targets behind a figure depend on the window, not on the method
    unknown_users = int((es.end == corpus.user_start[es.users]).sum())
    if a.protocol == "batch":
        print(f"{a.window} window from {es.now}: {len(es.users)} users with {behind['conv_recall@100']} distinct "
              f"(user, item) conversions, catalogue {corpus.n_items} items; {unknown_users} users have no earlier "
              "event and get conversion popularity from every method, as from the service. Mean over users [95% "
              "bootstrap]; users and targets: those behind each figure (targets: conversions; engagements for eng_*).\n")
    else:
        print(f"{a.window} window from {es.now}, live protocol: {len(es.users)} users at their first conversion, "
              f"{int(es.with_fresh.sum())} of them with fresh events before it ({sum(map(len, es.fresh))} events); "
              f"targets: {behind['conv_recall@100']} distinct (user, item) conversions from that moment on; "
              f"{unknown_users} users have no event before the window; catalogue {corpus.n_items} items. Mean over "
              "users [95% bootstrap].\n")
    print(_text_table(["metric", "users", "targets", *results], rows))
    out = {"window": a.window, "protocol": a.protocol, "window_start": es.now, "users": len(es.users),
           "targets": behind, "results": results}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=float)
    return out


if __name__ == "__main__":
    main()
