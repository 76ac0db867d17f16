"""Admission of new connections, per client address: a client that opens connections faster than a rate is
paced, then refused, before the service reads a byte from them.

Why: each new connection costs the event loop its set-up (accept, uvicorn's protocol, parsing the headers)
even when the request is refused at once (a 414, a 401), and one process answers on one core, so a client
that opens hundreds of connections a second slows every other client's answers. A keep-alive client opens
one connection and is never paced.

The rule is GCRA (the generic cell rate algorithm: a token bucket written as one timestamp per address).
Each address may open ``burst`` connections at once and then one every 1/``rate`` seconds. A connection over
that waits unread (its reading paused) until its turn, so a client that waits for answers slows to the rate.
One whose turn is more than ``max_wait_s`` away is refused with a 429 at once, without being read; so is any
connection while ``max_waiting`` connections of all addresses are already waiting.

The limit is per process (``--workers N``: up to N times the rate) and per address: behind a proxy every
client has the proxy's address, so list the proxy in ``exempt`` (or set the rate to 0, off) and limit at the
proxy. Many attacking addresses need a limit in front of the service.
"""

from __future__ import annotations

import orjson

# Schedules are sums of 1/rate on the loop's clock, and float rounding leaves a connection inside its burst a
# wait of about 1e-11 s (at now = 67393.788 and rate 10 the third of three at once was "delayed" by 1.5e-11 s). A
# wait under a microsecond is none: far below the loop's timer resolution (uvloop: 1 ms).
NO_WAIT_S = 1e-6

_BODY_TEMPLATE = "more than {rate:g} new connections a second from this address; reuse connections (keep-alive)"


class Admission:
    """When each new connection of a client address may be read (see the module doc)."""

    def __init__(self, rate: float, burst: int, max_wait_s: float, exempt: frozenset[str] = frozenset(),
                 max_waiting: int = 1024, max_clients: int = 100_000):
        if rate < 0 or burst < 1 or max_wait_s < 0 or max_waiting < 0 or max_clients < 1:
            raise ValueError(f"admission: rate {rate}, burst {burst}, max_wait_s {max_wait_s}, max_waiting "
                             f"{max_waiting}, max_clients {max_clients}: expected rate >= 0, burst >= 1, the rest >= 0")
        self.rate, self.burst, self.max_wait_s = rate, burst, max_wait_s
        self.exempt, self.max_waiting, self.max_clients = exempt, max_waiting, max_clients
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.tolerance = (burst - 1) * self.interval  # how far ahead of now an address's schedule may run
        self.tat: dict[str, float] = {}  # address -> theoretical arrival time of its next connection
        self.waiting = 0  # connections of every address waiting for their turn now
        self.metrics = None  # serve.metrics.Metrics of the app, once it is loaded (ServeConfig.load): the totals
        body = orjson.dumps({"detail": _BODY_TEMPLATE.format(rate=rate)})
        self.refusal = (b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)

    def wait(self, address: str | None, now: float) -> float | None:
        """Seconds a new connection from ``address`` waits before it is read (0.0: read at once), or None: refuse
        it. A connection given a wait > 0 must be reported with :meth:`done_waiting` when it ends waiting."""
        if self.rate == 0 or address is None or address in self.exempt:
            return 0.0
        tat = max(self.tat.get(address, now), now)
        wait = tat - self.tolerance - now
        if wait <= NO_WAIT_S:
            wait = 0.0
        if wait > self.max_wait_s + NO_WAIT_S or (wait > 0 and self.waiting >= self.max_waiting):
            if self.metrics is not None:
                self.metrics.connections_refused.inc()
            return None  # a refused connection does not move the schedule: it costs the client nothing later
        if address not in self.tat and len(self.tat) >= self.max_clients:
            self._forget(now)
        self.tat[address] = tat + self.interval
        if wait <= 0:
            return 0.0
        self.waiting += 1
        if self.metrics is not None:
            self.metrics.connections_delayed.inc()
        return wait

    def done_waiting(self) -> None:
        self.waiting -= 1

    def _forget(self, now: float) -> None:
        """Bound the table: drop the addresses whose schedule is in the past (they would start afresh anyway),
        and if every one is still ahead (a flood of distinct addresses), all of them."""
        self.tat = {a: t for a, t in self.tat.items() if t > now}
        if len(self.tat) >= self.max_clients:
            self.tat.clear()
