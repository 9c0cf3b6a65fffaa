"""Click-stream simulator: a seeded, realistic stream of impressions and delayed actions.

Users and items have latent vectors (items cluster around their category's centre) and
Zipf-distributed popularity. Each request shows ``candidates`` items to a user in a session;
each candidate is clicked with a known probability
``sigmoid(u . v + b_user + b_item + bias - position_decay * position)``. Clicks arrive after a
log-normal delay (seconds) with a tail of late ones (minutes); a click is followed by a
purchase with probability ``purchase_rate``. Tastes drift (an Ornstein-Uhlenbeck walk of the
user vectors), new items and users appear and old items are retired as event time passes.
Deliveries are slightly out of order, a few are duplicated (same event id, same bytes) and a
few are malformed (missing fields, wrong types, unknown types, bytes that are not JSON,
huge payloads). The same seed always gives the same stream.

Examples
--------
>>> sim = ClickStreamSimulator(SimulatorConfig(seed=1, n_users=50, n_items=40, candidates=10))
>>> recs = [r for _, r in sim.records(n_requests=30)]
>>> recs == [r for _, r in ClickStreamSimulator(sim.config).records(n_requests=30)]
True
>>> from freshrec.stream.events import decode
>>> decode(recs[0])["type"]
'impression'
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from freshrec._validate import is_int, is_number, require
from freshrec.stream.base import Log
from freshrec.stream.events import SCHEMA_VERSION, encode, partition_for

__all__ = ["SimulatorConfig", "ClickStreamSimulator", "write_to_log"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SimulatorConfig:
    """Parameters of :class:`ClickStreamSimulator` (all rates in event time).

    Parameters
    ----------
    seed
        Same seed, same stream.
    n_users, n_items
        Initial population; ``new_users_per_s``/``new_items_per_s`` add more and
        ``item_churn_per_s`` retires items.
    dim
        Latent dimension.
    candidates
        Items shown per request.
    zipf_s
        Zipf exponent of user and item popularity.
    requests_per_s
        Request rate (event time); the stream's event rate is about
        ``requests_per_s * (1 + candidates * ctr)``.
    bias, position_decay
        Logit offset (sets the click-through rate) and per-position penalty.
    drift_per_s
        Standard deviation per sqrt(second) of the users' taste walk.
    click_delay_median_s, late_click_rate, late_click_max_s
        Log-normal click delay, and the share of clicks delayed uniformly up to the max.
    purchase_rate
        Probability that a click is followed by a ``purchase`` action.
    duplicate_rate, malformed_rate
        Share of events delivered twice, and of malformed events added.
    max_jitter_s
        Deliveries are out of order by up to this much.
    session_continue
        Probability that a request continues an open session rather than opening one.
    start_time
        Event time of the first request (Unix seconds).
    true_probabilities
        Write each candidate's true click probability as ``true_p``.
    """

    seed: int = 0
    n_users: int = 20_000
    n_items: int = 5_000
    dim: int = 8
    candidates: int = 100
    zipf_s: float = 1.1
    requests_per_s: float = 200.0
    bias: float = -4.0
    position_decay: float = 0.01
    drift_per_s: float = 0.002
    new_users_per_s: float = 1.0
    new_items_per_s: float = 0.5
    item_churn_per_s: float = 0.5
    click_delay_median_s: float = 8.0
    late_click_rate: float = 0.03
    late_click_max_s: float = 900.0
    purchase_rate: float = 0.1
    duplicate_rate: float = 0.01
    malformed_rate: float = 0.001
    max_jitter_s: float = 1.0
    session_continue: float = 0.7
    start_time: int = 1_700_000_000
    true_probabilities: bool = True

    def __post_init__(self) -> None:
        o = "SimulatorConfig"
        for f in ("seed", "start_time"):
            require(
                is_int(getattr(self, f)) and getattr(self, f) >= 0,
                o,
                f,
                "an int >= 0",
                getattr(self, f),
            )
        for f in ("n_users", "n_items", "dim", "candidates"):
            require(
                is_int(getattr(self, f)) and getattr(self, f) >= 1,
                o,
                f,
                "an int >= 1",
                getattr(self, f),
            )
        require(
            self.candidates <= self.n_items,
            o,
            "candidates",
            f"<= n_items ({self.n_items})",
            self.candidates,
        )
        for f in ("zipf_s", "requests_per_s", "click_delay_median_s", "late_click_max_s"):
            require(
                is_number(getattr(self, f)) and getattr(self, f) > 0,
                o,
                f,
                "a number > 0",
                getattr(self, f),
            )
        for f in (
            "position_decay",
            "drift_per_s",
            "new_users_per_s",
            "new_items_per_s",
            "item_churn_per_s",
            "max_jitter_s",
        ):
            require(
                is_number(getattr(self, f)) and getattr(self, f) >= 0,
                o,
                f,
                "a number >= 0",
                getattr(self, f),
            )
        for f in (
            "late_click_rate",
            "purchase_rate",
            "duplicate_rate",
            "malformed_rate",
            "session_continue",
        ):
            require(
                is_number(getattr(self, f)) and 0 <= getattr(self, f) <= 1,
                o,
                f,
                "a number in [0, 1]",
                getattr(self, f),
            )
        require(is_number(self.bias), o, "bias", "a number", self.bias)


class _Population:
    """Latent vectors, biases, popularity and attributes of a growing set of entities."""

    def __init__(self, rng: np.random.Generator, n: int, dim: int, zipf_s: float) -> None:
        self.rng, self.dim, self.zipf_s = rng, dim, zipf_s
        self.vec = np.zeros((0, dim))
        self.bias = np.zeros(0)
        self.attrs = np.zeros((0, 3), np.int64)
        self.active = np.zeros(0, bool)
        self.weight = np.zeros(0)
        self._cdf: np.ndarray | None = None
        self._ids = np.zeros(0, np.int64)
        self.add(n)

    def add(self, n: int, centres: np.ndarray | None = None) -> None:
        vec = self.rng.normal(0, 1 / math.sqrt(self.dim), (n, self.dim))
        attrs = np.stack(
            [self.rng.integers(0, 50, n), self.rng.integers(0, 3, n), self.rng.integers(0, 8, n)],
            axis=1,
        )
        if centres is not None:
            vec = 0.6 * vec + centres[attrs[:, 0]]
        self.vec = np.concatenate([self.vec, vec])
        self.bias = np.concatenate([self.bias, self.rng.normal(0, 0.5, n)])
        self.attrs = np.concatenate([self.attrs, attrs])
        self.active = np.concatenate([self.active, np.ones(n, bool)])
        # popularity by a random Zipf rank, so new entities can become popular
        ranks = self.rng.integers(1, max(len(self.bias), 2), n)
        self.weight = np.concatenate([self.weight, ranks.astype(float) ** -self.zipf_s])
        self._cdf = None

    def retire(self, n: int) -> None:
        live = np.flatnonzero(self.active)
        if len(live) > n + 200:
            self.active[self.rng.choice(live, n, replace=False)] = False
            self._cdf = None

    def sample(self, size: int) -> np.ndarray:
        if self._cdf is None:
            self._ids = np.flatnonzero(self.active)
            w = self.weight[self._ids]
            self._cdf = np.cumsum(w) / w.sum()
        k = np.searchsorted(self._cdf, self.rng.random(size))
        return self._ids[np.minimum(k, len(self._ids) - 1)]

    def candidates(self, n: int) -> np.ndarray:
        """``n`` distinct live ids: half drawn by popularity, the rest uniformly."""
        self.sample(1)  # refresh the cdf
        while True:
            draw = np.concatenate(
                [self.sample(n), self._ids[self.rng.integers(0, len(self._ids), 2 * n)]]
            )
            _, first = np.unique(draw, return_index=True)
            if len(first) >= n:
                first.sort()
                return draw[first[:n]]


class ClickStreamSimulator:
    """Seeded generator of impression and action events (see the module docstring).

    Parameters
    ----------
    config
        :class:`SimulatorConfig`.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()

    def records(self, n_requests: int | None = None) -> Iterator[tuple[str, bytes]]:
        """Yield ``(request_id, encoded event)`` in delivery order, ``n_requests`` requests
        (None: forever). Actions and late deliveries are flushed at the end."""
        c = self.config
        rng = np.random.default_rng(c.seed)
        centres = rng.normal(0, 1.2 / math.sqrt(c.dim), (50, c.dim))
        users = _Population(rng, c.n_users, c.dim, c.zipf_s)
        items = _Population(rng, c.n_items, c.dim, c.zipf_s)
        items.vec = 0.6 * items.vec + centres[items.attrs[:, 0]]
        recent: dict[int, list[int]] = {}
        user_time: dict[int, float] = {}
        sessions: list[int] = []
        heap: list[tuple[float, int, str, bytes]] = []
        seq = 0
        n_event = 0
        t = float(c.start_time)
        last_tick = t
        k = 0

        def push(deliver: float, rid: str, payload: bytes) -> None:
            nonlocal seq
            heapq.heappush(heap, (deliver, seq, rid, payload))
            seq += 1

        while n_requests is None or k < n_requests:
            t += rng.exponential(1.0 / c.requests_per_s)
            if t - last_tick >= 1.0:  # population dynamics once per event-time second
                dt = t - last_tick
                last_tick = t
                for pop, rate in ((users, c.new_users_per_s), (items, c.new_items_per_s)):
                    n_new = int(rng.poisson(rate * dt))
                    if n_new:
                        pop.add(n_new, centres if pop is items else None)
                n_old = int(rng.poisson(c.item_churn_per_s * dt))
                if n_old:
                    items.retire(n_old)
            # session: continue an open one or start a new one
            if sessions and rng.random() < c.session_continue:
                user = sessions[int(rng.integers(len(sessions)))]
            else:
                user = int(users.sample(1)[0])
                sessions.append(user)
                if len(sessions) > 64:
                    sessions.pop(0)
            # taste drift since the user was last seen (OU walk towards 0)
            dt_u = t - user_time.get(user, t)
            user_time[user] = t
            if dt_u > 0 and c.drift_per_s > 0:
                users.vec[user] = users.vec[user] * math.exp(-1e-5 * dt_u) + rng.normal(
                    0, c.drift_per_s * math.sqrt(dt_u), c.dim
                )
            cand = items.candidates(c.candidates)
            pos = np.arange(len(cand))
            logit = (
                items.vec[cand] @ users.vec[user]
                + users.bias[user]
                + items.bias[cand]
                + c.bias
                - c.position_decay * pos
            )
            p = 1.0 / (1.0 + np.exp(-logit))
            clicked = rng.random(len(cand)) < p
            rid = f"r{c.seed}-{k}"
            ua = users.attrs[user]
            imp: dict[str, Any] = {
                "v": SCHEMA_VERSION,
                "type": "impression",
                "event_id": f"e{n_event}",
                "request_id": rid,
                "user_id": user,
                "timestamp": round(t, 3),
                "user": {
                    "gender": int(ua[1]),
                    "age": int(ua[2]),
                    "region": int(ua[0] % 20),
                    "recent_clicks": list(recent.get(user, [])),
                },
                "candidates": [],
            }
            n_event += 1
            ia = items.attrs[cand].tolist()
            cl = cand.tolist()
            if c.true_probabilities:
                pl = np.round(p, 6).tolist()
                imp["candidates"] = [
                    {
                        "item_id": cl[j],
                        "position": j,
                        "features": {"category": a[0], "brand": a[1] * 100 + a[2], "price": a[2]},
                        "true_p": pl[j],
                    }
                    for j, a in enumerate(ia)
                ]
            else:
                imp["candidates"] = [
                    {
                        "item_id": cl[j],
                        "position": j,
                        "features": {"category": a[0], "brand": a[1] * 100 + a[2], "price": a[2]},
                    }
                    for j, a in enumerate(ia)
                ]
            imp_payload = encode(imp)
            push(t + rng.uniform(0, c.max_jitter_s), rid, imp_payload)
            for j in np.flatnonzero(clicked):
                item = int(cand[j])
                if rng.random() < c.late_click_rate:
                    delay = rng.uniform(60, c.late_click_max_s)
                else:
                    delay = c.click_delay_median_s * math.exp(rng.normal(0, 0.8))
                acts = [("click", t + delay)]
                if rng.random() < c.purchase_rate:
                    acts.append(("purchase", t + delay + rng.exponential(30.0)))
                for action, ts in acts:
                    ev = {
                        "v": SCHEMA_VERSION,
                        "type": "action",
                        "event_id": f"e{n_event}",
                        "request_id": rid,
                        "item_id": item,
                        "action": action,
                        "timestamp": round(ts, 3),
                    }
                    n_event += 1
                    payload = encode(ev)
                    d = ts + rng.uniform(0, c.max_jitter_s)
                    push(d, rid, payload)
                    if rng.random() < c.duplicate_rate:
                        push(d + rng.uniform(0, 5.0), rid, payload)
                rl = recent.setdefault(user, [])
                rl.append(item)
                del rl[:-10]
            if rng.random() < c.duplicate_rate:
                push(t + rng.uniform(0, 5.0), rid, imp_payload)
            if rng.random() < c.malformed_rate * 2:
                push(t, rid, self._malformed(rng, rid, n_event, t))
                n_event += 1
            k += 1
            while heap and heap[0][0] <= t:
                _, _, r, payload = heapq.heappop(heap)
                yield r, payload
        while heap:
            _, _, r, payload = heapq.heappop(heap)
            yield r, payload

    @staticmethod
    def _malformed(rng: np.random.Generator, rid: str, n: int, t: float) -> bytes:
        kind = int(rng.integers(5))
        if kind == 0:
            return encode({"type": "action", "event_id": f"e{n}", "request_id": rid})
        if kind == 1:
            return encode(
                {
                    "type": "action",
                    "event_id": f"e{n}",
                    "request_id": rid,
                    "item_id": 1,
                    "action": "click",
                    "timestamp": "yesterday",
                }
            )
        if kind == 2:
            return encode({"type": "purchase_order", "event_id": f"e{n}", "timestamp": t})
        if kind == 3:
            return b"\x00{not json"
        return encode(
            {
                "type": "action",
                "event_id": f"e{n}",
                "request_id": rid,
                "item_id": 1,
                "action": "click",
                "timestamp": t,
                "blob": "x" * (2 << 20),
            }
        )


def write_to_log(
    records: Iterator[tuple[str, bytes]],
    log: Log,
    *,
    n_events: int | None = None,
    rate: float | None = None,
    batch: int = 256,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append ``records`` to ``log`` (partition by request id), at ``rate`` events/s of wall
    time or as fast as possible; returns how many were written.

    Examples
    --------
    >>> import tempfile
    >>> from freshrec.stream import FileLog
    >>> sim = ClickStreamSimulator(SimulatorConfig(n_users=20, n_items=30, candidates=5))
    >>> log = FileLog(tempfile.mkdtemp())
    >>> write_to_log(sim.records(), log, n_events=100)
    100
    >>> log.end_offset(0)
    100
    >>> log.close()
    """
    parts = log.partitions
    pending: list[list[bytes]] = [[] for _ in range(parts)]
    written = 0
    in_batch = 0
    t0 = time.monotonic()

    def flush() -> None:
        for p in range(parts):
            if pending[p]:
                log.append(pending[p], partition=p)
                pending[p] = []

    for rid, payload in records:
        pending[partition_for(rid, parts) if parts > 1 else 0].append(payload)
        written += 1
        in_batch += 1
        if in_batch >= batch:
            flush()
            in_batch = 0
            if progress is not None:
                progress(written)
            if rate:
                ahead = written / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        if n_events is not None and written >= n_events:
            break
    flush()
    if progress is not None:
        progress(written)
    return written
