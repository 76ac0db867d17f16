"""A synthetic shopping world in the event-log contract, realistic enough that a model can fail on it.

What is planted:
- items: category (Zipf over categories), brand, price, a noisy rating; a hidden quality and a hidden
  "fit" vector (partly shared within a brand, so features say something about new items); Zipf-like
  popularity within a category; a share of items launched while the log runs (new arrivals, with a
  novelty boost that fades), some of them after the training window.
- users: a few interests over categories (a concentrated mixture, which may drift to a second one over
  time), a visible style taste (drives what they view) and a hidden fit taste (drives what they buy);
  a region feature loosely tied to their main interest.
- sessions: a category from the user's mixture, views of popular items of it chosen by style; views
  lead to clicks, add-to-carts and, rarely, purchases that depend on fit and quality. Engagement alone
  barely shows fit; dwell time partly reveals it.

``python -m retrieval.synth --out DIR [--users N --items M --seed S]`` writes DIR/events.parquet,
DIR/items.parquet, DIR/users.parquet and DIR/world.json; events are written in row groups, one chunk
of users at a time, so 1M items and 10M+ events fit in bounded memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

EVENT_NAMES = ("view", "click", "add_to_cart", "purchase")
DAY = 86_400


@dataclass
class WorldConfig:
    users: int = 4000  # number of users
    items: int = 10000  # number of items (catalogue size)
    categories: int = 80  # item categories
    brands_per_category: int = 6  # brands within each category
    days: int = 60  # time span of the log
    sessions_per_user: float = 8.0  # mean sessions per user (activity varies log-normally)
    views_per_session: float = 6.0  # mean item views per session
    candidates: int = 30  # popular items of the category a user looks at before choosing one to view
    style_weight: float = 2.0  # how strongly a user's style picks among the candidates (0 = by popularity only)
    late_item_fraction: float = 0.3  # share of items launched during the log (no event before their launch)
    late_start: float = 0.3  # late items launch uniformly between this fraction of the span and 0.97
    novelty: float = 2.0  # extra choice logit of a just-launched item, decaying with its age
    novelty_days: float = 7.0  # e-folding age of the novelty boost
    interest_concentration: float = 2.0  # Dirichlet total of a user's interest mix over categories (small = few interests)
    interest_drift: float = 0.0  # chance, growing linearly to this by the log's end, that a session follows a second interest mix
    taste_dim: int = 8  # dimension of hidden style and fit vectors
    zipf: float = 1.0  # exponent of item popularity within a category
    missing_dwell: float = 0.3  # share of rows whose dwell_s is null (derived from timestamps instead)
    seed: int = 0  # everything follows from the seed
    chunk_users: int = 4000  # users generated (and written as one row group) at a time
    t0: int = 1_700_000_000  # epoch seconds of the first day


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class World:
    """Items and users with their hidden traits; events are generated per chunk of users."""

    def __init__(self, cfg: WorldConfig):
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        C, B, D, n = cfg.categories, cfg.brands_per_category, cfg.taste_dim, cfg.items
        self.span = cfg.days * DAY
        cat_p = 1.0 / np.arange(1, C + 1) ** 0.7
        self.category = rng.choice(C, size=n, p=cat_p / cat_p.sum())
        brand_p = 1.0 / np.arange(1, B + 1)
        self.brand = self.category * B + rng.choice(B, size=n, p=brand_p / brand_p.sum())
        cat_style = rng.normal(size=(C, D))
        brand_fit = rng.normal(size=(C * B, D))
        brand_q = rng.normal(size=C * B)
        self.style = (cat_style[self.category] + 0.5 * rng.normal(size=(n, D))).astype(np.float32)
        self.fit = (0.6 * brand_fit[self.brand] + 0.8 * rng.normal(size=(n, D))).astype(np.float32)
        self.quality = (0.6 * brand_q[self.brand] + 0.8 * rng.normal(size=n)).astype(np.float32)
        cat_price = rng.uniform(2.0, 5.0, size=C)
        self.log_price = (cat_price[self.category] + 0.3 * self.quality + 0.4 * rng.normal(size=n)).astype(np.float32)
        self.rating = np.clip(3.5 + 0.7 * self.quality + rng.normal(0, 0.6, size=n), 1, 5).round(1)
        self.rating_missing = rng.random(n) < 0.1
        late = rng.random(n) < cfg.late_item_fraction
        self.launch = np.where(late, cfg.t0 + rng.uniform(cfg.late_start, 0.97, size=n) * self.span,
                               cfg.t0 - DAY).astype(np.int64)
        self.late = late
        # Popularity: a random rank within the category, Zipf weights; cum lays categories on [c, c + 1).
        order = np.lexsort((rng.random(n), self.category))
        rank = np.zeros(n, np.int64)
        cat_sorted = self.category[order]
        first = np.searchsorted(cat_sorted, np.arange(C))
        rank[order] = np.arange(n) - first[cat_sorted]
        self.popularity = (1.0 / (rank + 1.0) ** cfg.zipf).astype(np.float64)
        w = self.popularity[order]
        csum = np.cumsum(w)
        cat_total = np.add.reduceat(w, first[np.isin(np.arange(C), cat_sorted)]) if n else w
        present = np.unique(cat_sorted)
        base = np.zeros(C)
        base[present] = np.concatenate([[0.0], np.cumsum(cat_total)[:-1]])
        totals = np.ones(C)
        totals[present] = cat_total
        self._cum = cat_sorted + (csum - base[cat_sorted]) / totals[cat_sorted]
        self._order = order
        self._present = present
        self.item_ids = np.arange(n, dtype=np.int64) + 100_000
        # Users are generated lazily from per-user seeds so any chunk can be made on its own.
        self._user_seed = cfg.seed * 1_000_003 + 17

    def users(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        cfg = self.cfg
        rng = np.random.default_rng([self._user_seed, lo])
        m = hi - lo
        C, D = cfg.categories, cfg.taste_dim
        interest = rng.dirichlet(np.full(C, cfg.interest_concentration / C), size=(2, m))  # [2, m, C]: the mix now, and the one drifted to
        interest[:, :, np.setdiff1d(np.arange(C), self._present)] = 0
        interest /= interest.sum(2, keepdims=True)
        region = np.where(rng.random(m) < 0.7, interest[0].argmax(1) % 5, rng.integers(0, 5, m))
        return {
            "user_id": np.arange(lo, hi, dtype=np.int64) + 1,
            "interest": interest,
            "style": rng.normal(size=(m, D)).astype(np.float32),
            "fit": rng.normal(size=(m, D)).astype(np.float32),
            "price_sens": rng.gamma(2.0, 0.4, size=m).astype(np.float32),
            "activity": rng.lognormal(0, 0.6, size=m),
            "region": np.array([f"r{r}" for r in region]),
            "rng": rng,
        }

    def sample_items(self, rng: np.random.Generator, cat: np.ndarray, k: int) -> np.ndarray:
        """[V, k] items of each row's category, drawn by popularity."""
        r = cat[:, None] + rng.random((len(cat), k))
        pos = np.clip(np.searchsorted(self._cum, r, side="left"), 0, len(self._order) - 1)
        return self._order[pos]

    def view_logits(self, style: np.ndarray, cand: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """style [V, D] of the viewing users, cand [V, K] candidate items, t [V] view times -> the style affinity
        [V, K] and the choice logits before Gumbel noise [V, K] (-inf for an item not yet launched)."""
        cfg = self.cfg
        style_aff = np.einsum("vd,vkd->vk", style, self.style[cand]) / np.sqrt(cfg.taste_dim)
        age = t[:, None] - self.launch[cand]  # [V, K] seconds since launch (< 0: not yet on sale)
        novelty = cfg.novelty * np.exp(-np.maximum(age, 0) / (cfg.novelty_days * DAY))
        return style_aff, np.where(age >= 0, cfg.style_weight * style_aff + novelty, -np.inf)

    def funnel_logits(self, fit: np.ndarray, price_sens: np.ndarray, item: np.ndarray,
                      style_aff: np.ndarray) -> tuple[np.ndarray, ...]:
        """A view's hidden fit affinity, the item's quality and the logits of a click, an add-to-cart given the
        click and a purchase given the cart: fit [..., D] and price_sens [...] of the viewing user, item [...]
        and style_aff [...] of the view; every output has item's shape."""
        fit_aff = np.einsum("...d,...d->...", fit, self.fit[item]) / np.sqrt(self.cfg.taste_dim)
        q = self.quality[item]
        click = -0.6 + 0.4 * style_aff + 0.15 * fit_aff
        cart = -1.6 + 0.6 * fit_aff + 0.4 * q
        buy = -0.6 + 1.6 * fit_aff + 1.0 * q - price_sens * (self.log_price[item] - 3.5)
        return fit_aff, q, click, cart, buy

    def events(self, lo: int, hi: int) -> pa.Table:
        """Events of users [lo, hi) as a contract table."""
        cfg, u = self.cfg, self.users(lo, hi)
        rng: np.random.Generator = u["rng"]
        m = hi - lo
        n_sess = np.maximum(1, rng.poisson(cfg.sessions_per_user * u["activity"]))
        s_user = np.repeat(np.arange(m), n_sess)  # [S]
        s_start = cfg.t0 + rng.uniform(0, self.span - 4 * 3600, size=len(s_user))
        # A session's category comes from the user's first interest mix, or, more often as time goes on, the second.
        drifted = rng.random(len(s_user)) < cfg.interest_drift * (s_start - cfg.t0) / self.span
        cum_int = np.cumsum(u["interest"], 2)[drifted.astype(np.int64), s_user]  # [S, C]
        s_cat = np.minimum((cum_int < rng.random(len(s_user))[:, None]).sum(1), cfg.categories - 1)
        n_views = 1 + rng.poisson(cfg.views_per_session - 1, size=len(s_user))
        v_sess = np.repeat(np.arange(len(s_user)), n_views)  # [V]
        v_user = s_user[v_sess]
        V = len(v_sess)
        # A view: among popular candidates of the session's category, launched ones, chosen by style and novelty.
        cand = self.sample_items(rng, s_cat[v_sess], cfg.candidates)  # [V, K]
        style_aff, logit = self.view_logits(u["style"][v_user], cand, s_start[v_sess])
        choice = np.argmax(logit - np.log(-np.log(rng.random(cand.shape))), 1)  # Gumbel-max: a softmax draw
        v_item0 = cand[np.arange(V), choice]
        fit_aff, q, click_l, cart_l, buy_l = self.funnel_logits(u["fit"][v_user], u["price_sens"][v_user], v_item0,
                                                                style_aff[np.arange(V), choice])
        # Dwell partly reveals fit and quality; clicks barely do; purchases depend on them.
        d_view = rng.lognormal(2.3 + 0.45 * fit_aff + 0.25 * q, 0.9)
        click = rng.random(V) < sigmoid(click_l)
        d_click = rng.lognormal(3.0 + 0.4 * fit_aff, 0.8)
        cart = click & (rng.random(V) < sigmoid(cart_l))
        buy = cart & (rng.random(V) < sigmoid(buy_l))
        d_cart = rng.lognormal(1.5, 0.5, size=V)
        # Time: views follow each other within the session; actions on a view follow the view.
        dur = d_view + click * d_click + cart * d_cart + rng.exponential(8.0, size=V)
        first_v = np.concatenate([[0], np.cumsum(n_views)[:-1]])
        csum = np.cumsum(dur)
        before = csum - dur - (csum - dur)[first_v][v_sess]
        t_view = s_start[v_sess] + before
        launched = self.launch[v_item0] <= t_view
        # Rows per view: view, click, add_to_cart, purchase ([V, 4], flattened in time order).
        ts = np.stack([t_view, t_view + d_view, t_view + d_view + d_click, t_view + d_view + d_click + d_cart], 1)
        dwell = np.stack([d_view, d_click, d_cart, np.full(V, np.nan)], 1)
        valid = np.stack([launched, click & launched, cart & launched, buy & launched], 1)
        ev = np.broadcast_to(np.arange(4), (V, 4))
        users_r = np.broadcast_to(u["user_id"][v_user][:, None], (V, 4))
        items_r = np.broadcast_to(self.item_ids[v_item0][:, None], (V, 4))
        sess_r = np.broadcast_to((lo * 1000 + v_sess)[:, None], (V, 4))
        keep = valid.ravel()
        ts_i = np.floor(ts.ravel()[keep]).astype(np.int64)
        dw = np.round(dwell.ravel()[keep], 1)
        dw[rng.random(len(dw)) < cfg.missing_dwell] = np.nan
        order = np.argsort(ts_i, kind="stable")
        names = np.array(EVENT_NAMES)[ev.ravel()[keep]][order]
        return pa.table({
            "user_id": pa.array(users_r.ravel()[keep][order], pa.int64()),
            "item_id": pa.array(items_r.ravel()[keep][order], pa.int64()),
            "event": pa.array(names, pa.string()),
            "ts": pa.array(ts_i[order], pa.int64()),
            "dwell_s": pa.array(dw[order], pa.float32(), from_pandas=True),
            "session_id": pa.array(sess_r.ravel()[keep][order], pa.int64()),
        })

    def items_table(self) -> pa.Table:
        rating = pa.array(self.rating, pa.float32(), mask=self.rating_missing)
        return pa.table({
            "item_id": pa.array(self.item_ids),
            "category": pa.array([f"c{c}" for c in self.category]),
            "brand": pa.array([f"b{b}" for b in self.brand]),
            "price": pa.array(np.exp(self.log_price).round(2), pa.float32()),
            "rating": rating,
            "launch_ts": pa.array(self.launch),
        })


def generate(out: str | Path, cfg: WorldConfig) -> dict:
    """Write the world to ``out``; returns the summary also written to world.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    world = World(cfg)
    pq.write_table(world.items_table(), out / "items.parquet")
    counts = dict.fromkeys(EVENT_NAMES, 0)
    user_parts = []
    tmp = out / "events.parquet.tmp"
    writer = None
    try:
        for lo in range(0, cfg.users, cfg.chunk_users):
            hi = min(cfg.users, lo + cfg.chunk_users)
            t = world.events(lo, hi)
            writer = writer or pq.ParquetWriter(tmp, t.schema)
            writer.write_table(t)
            for name, c in zip(*np.unique(t.column("event").to_numpy(zero_copy_only=False), return_counts=True), strict=True):
                counts[str(name)] += int(c)
            u = world.users(lo, hi)
            user_parts.append(pa.table({"user_id": u["user_id"], "region": u["region"]}))
            log.info("synth: users %d..%d: %d events", lo, hi, t.num_rows)
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(out / "events.parquet")
    pq.write_table(pa.concat_tables(user_parts), out / "users.parquet")
    engagement = counts["view"] + counts["click"] + counts["add_to_cart"]
    summary = {
        "config": asdict(cfg),
        "events": counts,
        "conversion_rate": counts["purchase"] / max(engagement, 1),
        "late_items": int(world.late.sum()),
        "late_after_ts": int(cfg.t0 + cfg.late_start * world.span),
        "seconds": round(time.perf_counter() - start, 2),
    }
    (out / "world.json").write_text(json.dumps(summary, indent=2))
    log.info("synth: wrote %s: %s", out, summary["events"])
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m retrieval.synth", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    for name, default in asdict(WorldConfig()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = vars(p.parse_args(argv))
    out = args.pop("out")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    summary = generate(out, WorldConfig(**args))
    print(json.dumps({k: summary[k] for k in ("events", "conversion_rate", "late_items", "seconds")}))


if __name__ == "__main__":
    main()
