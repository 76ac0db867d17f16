"""Live users embedded together (serve/batcher.py): each answer as when alone, batched when requests arrive
together, per artifact across a swap, errors reaching every request of the batch."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import TOKEN

from retrieval.heads import SERVED
from retrieval.live import EventTail
from serve.app import create_app
from serve.batcher import MAX_HOPS, TowerBatcher
from serve.load import load_served
from serve.settings import Settings


def fresh_events(served, seed: int, n: int = 12) -> EventTail:
    rng = np.random.default_rng(seed)
    return EventTail(rng.integers(0, served.index.ntotal, n), rng.integers(0, len(served.event_names), n).astype(np.int16),
                     1_700_000_000 + np.cumsum(rng.integers(1, 900, n)), np.full(n, np.nan, np.float32))


@pytest.fixture(scope="module")
def served(root):
    return load_served(root / "v1"), load_served(root / "v2")


def test_a_batch_states_and_answers_as_each_user_alone(served, root):
    v1, _ = served
    known = pq.read_table(root / "v1" / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()
    users = [None, known[0], "someone new", known[3]]  # new users and known ones, with their stored events
    fresh = [fresh_events(v1, i) for i in range(len(users))]
    batch = v1.live_states(users, fresh, v1.heads)
    for u, f, s in zip(users, fresh, batch, strict=True):
        alone, = v1.live_states([u], [f], v1.heads)
        np.testing.assert_array_equal(s.hist_rows, alone.hist_rows)
        for h in v1.heads:  # one tower call on [4] users against four on [1]: the same to float rounding
            np.testing.assert_allclose(s.vecs[h], alone.vecs[h], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(s.hist_scores[h], alone.hist_scores[h], rtol=1e-5, atol=1e-6)
        assert (v1.answer_live(u, f, s, 20, True).ids == v1.candidates_live(u, f, 20, True).ids)


def test_users_of_one_round_run_together_per_artifact_and_capped(served):
    v1, v2 = served
    runs = []

    async def round_of(batcher, pairs):
        return await asyncio.gather(*(batcher.state(s, None, fresh_events(s, i), [SERVED])
                                      for i, s in enumerate(pairs)))

    pairs = [v1, v2, v1, v1, v2]  # a swap landed between arrivals: each artifact embeds its own users
    got = asyncio.run(round_of(TowerBatcher(64, runs.append), pairs))
    assert sorted(runs) == [2, 3]
    for i, (s, state) in enumerate(zip(pairs, got, strict=True)):
        alone, = s.live_states([None], [fresh_events(s, i)], [SERVED])
        np.testing.assert_allclose(state.vecs[SERVED], alone.vecs[SERVED], rtol=1e-5, atol=1e-6)
        assert list(state.vecs) == [SERVED]
    runs.clear()
    asyncio.run(round_of(TowerBatcher(2, runs.append), [v1] * 5))
    assert runs == [2, 2, 1]
    with pytest.raises(ValueError, match="max_batch"):
        TowerBatcher(0)


def test_users_arriving_over_a_few_rounds_join_one_run_and_a_lone_one_is_not_held(served):
    v1, _ = served
    runs = []

    async def after(batcher, rounds: int, i: int):
        for _ in range(rounds):  # a request whose handler reaches the batcher a few rounds of the loop later
            await asyncio.sleep(0)
        return await batcher.state(v1, None, fresh_events(v1, i), [SERVED])

    async def staggered():
        b = TowerBatcher(64, runs.append)
        await asyncio.gather(*(after(b, r, i) for i, r in enumerate([0, 0, 1, 2, 3])))
        await asyncio.wait_for(after(b, 0, 9), timeout=5)  # alone: answered after a few empty rounds

    asyncio.run(staggered())
    assert runs == [5, 1]


def test_a_run_waits_for_requests_on_their_way_and_only_for_a_while(served):
    v1, _ = served

    async def ask(b: TowerBatcher, i: int, way: float | int | None = None, start: int = 0):
        """A live request: it starts ``start`` rounds late, then awaits ``way`` (rounds of the loop, or seconds)
        on its way (inside on_the_way when given), then asks for its state."""
        for _ in range(start):
            await asyncio.sleep(0)
        if way is not None:
            with b.on_the_way():
                if isinstance(way, float):
                    await asyncio.sleep(way)
                else:
                    for _ in range(way):
                        await asyncio.sleep(0)
        return await b.state(v1, None, fresh_events(v1, i), [SERVED])

    async def runs_of(*requests, wait: float = 0.002) -> list[int]:
        runs = []
        b = TowerBatcher(64, runs.append, wait)
        await asyncio.gather(*(ask(b, i, *r) for i, r in enumerate(requests)))
        return runs

    rounds = 3 * MAX_HOPS  # past the rounds a run waits for arrivals it does not expect
    # The first asks a round after the others set off, on their way for many rounds: one run for the three.
    assert asyncio.run(runs_of((None, 1), (rounds,), (rounds + 2,))) == [3]
    assert asyncio.run(runs_of((None, 1), (None, rounds))) == [1, 1]  # the same arrival, not announced
    assert asyncio.run(runs_of((None, 0), (rounds, 2))) == [1, 1]  # set off after the run was asked for
    assert asyncio.run(runs_of((None, 1), (rounds,), wait=0)) == [1, 1]  # live_wait_s 0: no waiting for it
    late = 1.0  # on its way far longer than a run waits (0.002 s); the bound below leaves room for a slow run

    async def timed() -> tuple[list[int], float]:
        runs = []
        b = TowerBatcher(64, runs.append, 0.002)
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(ask(b, 0, late))
        await asyncio.sleep(0)
        start = loop.time()
        await ask(b, 1)  # asked for while the other is on its way: waits 2 ms, not ``late``
        waited = loop.time() - start
        await first
        return runs, waited

    runs, waited = asyncio.run(timed())
    assert runs == [1, 1] and waited < late / 2


def test_an_error_in_the_run_reaches_every_request_of_the_batch(served):
    v1, _ = served
    bad = EventTail(np.array([v1.index.ntotal + 10**6]), np.zeros(1, np.int16), np.array([1_700_000_000]),
                    np.full(1, np.nan, np.float32))  # a row past the catalogue: the tower's lookup fails

    async def both():
        b = TowerBatcher(64)
        return await asyncio.gather(b.state(v1, None, bad, [SERVED]), b.state(v1, None, fresh_events(v1, 1), [SERVED]),
                                    return_exceptions=True)

    assert all(isinstance(r, IndexError) for r in asyncio.run(both()))


def test_concurrent_live_requests_are_embedded_together_and_answered_as_alone(root):
    items = [int(i) for i in load_served(root / "v1").item_ids[:40]]
    bodies = [{"k": 10, "events": [{"item_id": items[(3 * j + i) % 40], "event": "view", "ts": 1_700_000_000 + 60 * i}
                                   for i in range(8)]} for j in range(8)]

    async def ask(live_batch: int, together: bool) -> tuple[list, str]:
        app = create_app(Settings(artifacts=root / "v1", admin_token=TOKEN, live_batch=live_batch))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                if together:
                    answers = await asyncio.gather(*(c.post("/candidates", json=b) for b in bodies))
                else:
                    answers = [await c.post("/candidates", json=b) for b in bodies]
                metrics = (await c.get("/metrics")).text
        assert all(r.status_code == 200 for r in answers)
        return [[x["item_id"] for x in r.json()["candidates"]] for r in answers], metrics

    alone, metrics_alone = asyncio.run(ask(64, together=False))
    together, metrics = asyncio.run(ask(64, together=True))
    assert together == alone
    assert "retrieval_live_batch_users_count 8.0" in metrics_alone  # one by one: eight runs
    runs = float(next(line.split()[-1] for line in metrics.splitlines()
                      if line.startswith("retrieval_live_batch_users_count")))
    assert runs < 8  # arriving together, some were embedded together
    assert "retrieval_live_batch_users_sum 8.0" in metrics
