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
import pyarrow as pa

from freshrec._validate import is_int, is_number, require
from freshrec.errors import InputError
from freshrec.stream.base import Log
from freshrec.stream.events import SCHEMA_VERSION, decode, encode, partition_for

__all__ = ["SimulatorConfig", "SimulateJobConfig", "ClickStreamSimulator", "write_to_log",
           "simulated_examples"]

logger = logging.getLogger(__name__)

#: requests generated together (vectorised) by :meth:`ClickStreamSimulator.records`
_BLOCK = 256
_TRUE_P = np.frombuffer(b'"true_p":0.', np.uint8)
_CLOSE = np.frombuffer(b"},", np.uint8)
_POW10 = 10 ** np.arange(5, -1, -1, dtype=np.int64)


def _ascii(texts: list[str]) -> np.ndarray:
    """Strings -> a (len, width) uint8 array of their ASCII, padded with spaces."""
    width = max(map(len, texts), default=1)
    return np.frombuffer("".join(t.ljust(width) for t in texts).encode(),
                         np.uint8).reshape(len(texts), width)


def _item_fragments(attrs: np.ndarray, done: np.ndarray) -> np.ndarray:
    """JSON fragments ``{"item_id":..,"features":{..},`` of every item (rows already in
    ``done`` are kept; new items are appended, the width grows when needed)."""
    new = _ascii([f'{{"item_id":{i},"features":{{"category":{a},"brand":{b * 100 + c},'
                  f'"price":{c}}},' for i, (a, b, c) in
                  enumerate(attrs[len(done):].tolist(), start=len(done))])
    width = max(done.shape[1], new.shape[1])
    pad = [np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=32)
           for x in (done, new)]
    return np.concatenate(pad)


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
    context_effects
        Known feature effects, for checking feature importance: one context feature
        ``ctx<k>`` per entry, drawn per request uniformly from ``context_values`` values and
        written with the user's features (a joined example's ``u_ctx<k>``). Value ``v`` adds
        ``context_effects[k] * w_k[v]`` to every candidate's click logit, with ``w_k`` fixed
        values of mean 0 and standard deviation 1 (so the entry is the effect's standard
        deviation; 0 makes an irrelevant feature). Drawn from a stream of their own: the
        rest of the stream is the same with or without them.
    context_values
        Values of each context feature.
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
    context_effects: tuple[float, ...] = ()
    context_values: int = 10

    def __post_init__(self) -> None:
        o = "SimulatorConfig"
        object.__setattr__(self, "context_effects", tuple(self.context_effects))
        require(all(is_number(e) for e in self.context_effects), o, "context_effects",
                "a list of numbers", self.context_effects)
        require(is_int(self.context_values) and self.context_values >= 2, o, "context_values",
                "an int >= 2", self.context_values)
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


@dataclass(frozen=True, kw_only=True)
class SimulateJobConfig(SimulatorConfig):
    """``freshrec simulate``: the simulator's parameters plus where and how much it writes.

    The ``simulate`` section of the config document (the demo's traffic reads it too).

    Parameters
    ----------
    log
        Target log spec (``file:PATH``, ``redis://HOST:PORT/DB#NAME``); the command refuses to
        start without one.
    partitions
        Partitions of the log when it is created.
    events, requests
        Stop after this many events or requests (both None: 1000 requests).
    events_per_wall_s
        Events written per wall second (None: as fast as possible).
    obd
        Replay this Open Bandit campaign directory instead of simulating.
    progress
        Draw a progress bar.

    Examples
    --------
    >>> SimulateJobConfig(log="file:runs/events", n_items=50, candidates=10).requests is None
    True
    """

    log: str = ""
    partitions: int = 1
    events: int | None = None
    requests: int | None = None
    events_per_wall_s: float | None = None
    obd: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        o = "SimulateJobConfig"
        require(isinstance(self.log, str), o, "log", "a log spec", self.log)
        require(is_int(self.partitions) and self.partitions >= 1, o, "partitions",
                "an int >= 1", self.partitions)
        for f in ("events", "requests"):
            v = getattr(self, f)
            require(v is None or (is_int(v) and v >= 1), o, f, "None or an int >= 1", v)
        require(self.events_per_wall_s is None or (is_number(self.events_per_wall_s)
                                                   and self.events_per_wall_s > 0), o,
                "events_per_wall_s", "None or a number > 0", self.events_per_wall_s)
        require(self.obd is None or (isinstance(self.obd, str) and bool(self.obd)), o, "obd",
                "None or a directory", self.obd)
        require(isinstance(self.progress, bool), o, "progress", "true or false", self.progress)


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

    def candidates_block(self, rows: int, n: int) -> np.ndarray:
        """``rows`` x ``n`` ids, each row ``n`` distinct live ids drawn like
        :meth:`candidates` (half by popularity, the rest uniformly; first draws first)."""
        self.sample(1)  # refresh the cdf
        draw = np.concatenate(
            [self.sample(rows * n).reshape(rows, n),
             self._ids[self.rng.integers(0, len(self._ids), (rows, 2 * n))]], axis=1)
        order = np.argsort(draw, axis=1, kind="stable")
        srt = np.take_along_axis(draw, order, axis=1)
        first_sorted = np.ones_like(srt, bool)
        first_sorted[:, 1:] = srt[:, 1:] != srt[:, :-1]
        first = np.empty_like(first_sorted)
        np.put_along_axis(first, order, first_sorted, axis=1)
        rank = np.cumsum(first, axis=1)
        take = first & (rank <= n)
        out = np.empty((rows, n), np.int64)
        ok = rank[:, -1] >= n
        if ok.all():
            out[:] = draw[take].reshape(rows, n)
            return out
        for r in range(rows):  # too few distinct ids in a row (tiny catalogues): redraw
            out[r] = draw[r][take[r]] if ok[r] else self.candidates(n)
        return out

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
        (None: forever). Actions and late deliveries are flushed at the end.

        Requests are drawn in blocks (at most :data:`_BLOCK` requests, never across a
        population update): users, candidates, click probabilities, clicks, delays and
        deliveries are vectorised over the block; only the session/drift walk and the event
        encoding go request by request."""
        c = self.config
        rng = np.random.default_rng(c.seed)
        ctx_rng = np.random.default_rng([c.seed, 1])  # context features: a stream of their own
        n_ctx = len(c.context_effects)
        ctx_w = ctx_rng.normal(0, 1, (n_ctx, c.context_values))
        ctx_w = ((ctx_w - ctx_w.mean(axis=1, keepdims=True)) / ctx_w.std(axis=1, keepdims=True)
                 * np.asarray(c.context_effects, np.float64).reshape(n_ctx, 1))
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
        n_cand = c.candidates
        pos = np.arange(n_cand)
        with_p = c.true_probabilities
        item_json = np.zeros((0, 1), np.uint8)
        pos_json = _ascii([f'"position":{j}' + ("," if with_p else "") for j in range(n_cand)])
        while n_requests is None or k < n_requests:
            size = _BLOCK if n_requests is None else min(_BLOCK, n_requests - k)
            times = t + np.cumsum(rng.exponential(1.0 / c.requests_per_s, size))
            # a population update happens before the first request of the next event-second
            if times[0] - last_tick >= 1.0:
                dt = float(times[0]) - last_tick
                last_tick = float(times[0])
                for pop, rate in ((users, c.new_users_per_s), (items, c.new_items_per_s)):
                    n_new = int(rng.poisson(rate * dt))
                    if n_new:
                        pop.add(n_new, centres if pop is items else None)
                n_old = int(rng.poisson(c.item_churn_per_s * dt))
                if n_old:
                    items.retire(n_old)
            size = max(1, int(np.searchsorted(times, last_tick + 1.0, side="left")))
            times = times[:size]
            t = float(times[-1])
            # sessions and taste drift, request by request (they depend on each other)
            cont = rng.random(size) < c.session_continue
            pick = rng.random(size)
            fresh = users.sample(size)
            noise = rng.normal(0, 1, (size, c.dim))
            block_users = np.empty(size, np.int64)
            uvec = np.empty((size, c.dim))
            tl = times.tolist()
            for i in range(size):
                if sessions and cont[i]:
                    user = sessions[int(pick[i] * len(sessions))]
                else:
                    user = int(fresh[i])
                    sessions.append(user)
                    if len(sessions) > 64:
                        sessions.pop(0)
                dt_u = tl[i] - user_time.get(user, tl[i])
                user_time[user] = tl[i]
                if dt_u > 0 and c.drift_per_s > 0:
                    users.vec[user] = (users.vec[user] * math.exp(-1e-5 * dt_u)
                                       + noise[i] * (c.drift_per_s * math.sqrt(dt_u)))
                block_users[i] = user
                uvec[i] = users.vec[user]
            cand = items.candidates_block(size, n_cand)
            logit = (np.einsum("bcd,bd->bc", items.vec[cand], uvec)
                     + users.bias[block_users][:, None] + items.bias[cand]
                     + c.bias - c.position_decay * pos)
            ctx = ctx_rng.integers(0, c.context_values, (size, n_ctx))
            if n_ctx:
                logit += ctx_w[np.arange(n_ctx), ctx].sum(axis=1)[:, None]
            ctx_l = ctx.tolist()
            p = 1.0 / (1.0 + np.exp(-logit))
            clicked = rng.random(p.shape) < p
            # per click: delay, purchase, deliveries and duplicates, all at once
            ci, cj = np.nonzero(clicked)
            m = len(ci)
            late = rng.random(m) < c.late_click_rate
            delay = np.where(late, rng.uniform(60, c.late_click_max_s, m),
                             c.click_delay_median_s * np.exp(rng.normal(0, 0.8, m)))
            click_ts = times[ci] + delay
            bought = rng.random(m) < c.purchase_rate
            buy_ts = click_ts + rng.exponential(30.0, m)
            click_dl = click_ts + rng.uniform(0, c.max_jitter_s, m)
            buy_dl = buy_ts + rng.uniform(0, c.max_jitter_s, m)
            click_dup = rng.random(m) < c.duplicate_rate
            buy_dup = rng.random(m) < c.duplicate_rate
            dup_shift = rng.uniform(0, 5.0, (m, 2))
            imp_dl = times + rng.uniform(0, c.max_jitter_s, size)
            imp_dup = rng.random(size) < c.duplicate_rate
            imp_dup_dl = times + rng.uniform(0, 5.0, size)
            bad = rng.random(size) < c.malformed_rate * 2
            # the candidate lists of the block as JSON text in one uint8 array: per candidate
            # its item's fragment, its position's fragment and true_p's digits (fixed-width
            # pieces padded with spaces, which JSON allows between tokens)
            ua = users.attrs[block_users].tolist()
            if len(item_json) < len(items.bias):
                item_json = _item_fragments(items.attrs, item_json)
            pieces = [item_json[cand], np.broadcast_to(pos_json, (size, *pos_json.shape))]
            if with_p:
                p6 = np.minimum(np.rint(p * 1e6), 999_999).astype(np.int64)
                pieces.append(np.broadcast_to(_TRUE_P, (size, n_cand, len(_TRUE_P))))
                pieces.append(((p6[..., None] // _POW10) % 10 + 48).astype(np.uint8))
            pieces.append(np.broadcast_to(_CLOSE, (size, n_cand, 2)))
            text = np.concatenate(pieces, axis=2)
            text[:, -1, -1] = 32  # no comma after the last candidate
            text = text.reshape(size, -1)
            cts, bts = np.round(click_ts, 3).tolist(), np.round(buy_ts, 3).tolist()
            clicks_of = np.searchsorted(ci, np.arange(size + 1)).tolist()
            cj_l, cdl, bdl = (cand[ci, cj].tolist(), click_dl.tolist(), buy_dl.tolist())
            shifts = dup_shift.tolist()
            for i in range(size):
                user = int(block_users[i])
                rid = f"r{c.seed}-{k}"
                u = ua[i]
                head = encode({
                    "v": SCHEMA_VERSION, "type": "impression", "event_id": f"e{n_event}",
                    "request_id": rid, "user_id": user, "timestamp": round(tl[i], 3),
                    "user": {"gender": u[1], "age": u[2], "region": u[0] % 20,
                             "recent_clicks": list(recent.get(user, [])),
                             **{f"ctx{j}": v for j, v in enumerate(ctx_l[i])}}})
                body = text[i].tobytes()
                imp_payload = b"".join((head[:-1], b',"candidates":[', body, b"]}"))
                n_event += 1
                heapq.heappush(heap, (float(imp_dl[i]), seq, rid, imp_payload))
                seq += 1
                for q in range(clicks_of[i], clicks_of[i + 1]):
                    item = cj_l[q]
                    acts = [("click", cts[q], cdl[q], click_dup[q], shifts[q][0])]
                    if bought[q]:
                        acts.append(("purchase", bts[q], bdl[q], buy_dup[q], shifts[q][1]))
                    for action, ts, d, dup, shift in acts:
                        payload = encode({"v": SCHEMA_VERSION, "type": "action",
                                          "event_id": f"e{n_event}", "request_id": rid,
                                          "item_id": item, "action": action,
                                          "timestamp": ts})
                        n_event += 1
                        heapq.heappush(heap, (d, seq, rid, payload))
                        seq += 1
                        if dup:
                            heapq.heappush(heap, (d + shift, seq, rid, payload))
                            seq += 1
                    rl = recent.setdefault(user, [])
                    rl.append(item)
                    del rl[:-10]
                if imp_dup[i]:
                    heapq.heappush(heap, (float(imp_dup_dl[i]), seq, rid, imp_payload))
                    seq += 1
                if bad[i]:
                    heapq.heappush(heap, (tl[i], seq, rid,
                                          self._malformed(rng, rid, n_event, tl[i])))
                    seq += 1
                    n_event += 1
                k += 1
                now = tl[i]
                while heap and heap[0][0] <= now:
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
        if kind == 2:
            return encode({"type": "purchase_order", "event_id": f"e{n}", "timestamp": t})
        if kind == 3:
            return b"\x00{not json"
        action = {"type": "action", "event_id": f"e{n}", "request_id": rid, "item_id": 1,
                  "action": "click", "timestamp": t}
        if kind == 1:
            return encode({**action, "timestamp": "yesterday"})
        return encode({**action, "blob": "x" * (2 << 20)})


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


def simulated_examples(config: SimulatorConfig, n_requests: int) -> pa.Table:
    """The stream of ``n_requests`` requests as flat examples, in event-time order: one row
    per shown candidate with ``user_id``, ``item_id``, ``position``, ``event_time``,
    ``click`` (clicked within the stream), the user's features (``u_gender``, ...,
    ``u_recent_clicks``, the context ``u_ctx<k>``), the item's and ``true_p`` (the simulator's click probability, when it writes it). Duplicate and
    malformed deliveries are not in it; a batch stand-in for ``simulate | join``.

    Examples
    --------
    >>> t = simulated_examples(SimulatorConfig(seed=1, n_users=50, n_items=40, candidates=5,
    ...                                        malformed_rate=0.0), n_requests=20)
    >>> t.num_rows, t.column_names[:5]
    (100, ['user_id', 'item_id', 'position', 'event_time', 'click'])
    >>> bool((np.diff(t.column("event_time").to_numpy()) >= 0).all())
    True
    """
    imps: list[dict[str, Any]] = []
    clicks: set[tuple[object, object]] = set()
    seen: set[object] = set()
    for _, payload in ClickStreamSimulator(config).records(n_requests=n_requests):
        try:
            ev = decode(payload)
        except InputError:  # a malformed delivery is not an example
            continue
        if ev.get("event_id") in seen:
            continue
        seen.add(ev.get("event_id"))
        if ev.get("type") == "impression":
            imps.append(ev)
        elif ev.get("type") == "action" and ev.get("action") == "click":
            clicks.add((ev["request_id"], ev["item_id"]))
    user_keys = list(imps[0]["user"]) if imps else []  # gender, age, ..., ctx<k>
    cols: dict[str, list[object]] = {n: [] for n in (
        "user_id", "item_id", "position", "event_time", "click",
        *(f"u_{k}" for k in user_keys), "i_category", "i_brand", "i_price", "true_p")}
    for ev in imps:
        u = ev["user"]
        for c in ev["candidates"]:
            f = c["features"]
            cols["user_id"].append(ev["user_id"])
            cols["item_id"].append(c["item_id"])
            cols["position"].append(c["position"])
            cols["event_time"].append(int(ev["timestamp"]))
            cols["click"].append(float((ev["request_id"], c["item_id"]) in clicks))
            for k in user_keys:
                cols[f"u_{k}"].append(u[k])
            cols["i_category"].append(f["category"])
            cols["i_brand"].append(f["brand"])
            cols["i_price"].append(float(f["price"]))
            cols["true_p"].append(float(c.get("true_p", float("nan"))))
    table = pa.table(cols)
    order = np.argsort(table.column("event_time").to_numpy(), kind="stable")
    return table.take(pa.array(order))
