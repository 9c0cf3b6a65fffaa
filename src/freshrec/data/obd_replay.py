"""Replay the Open Bandit Dataset as an event stream: impressions and clicks in time order.

Each logged row (one item shown at one position to one user, see
:class:`~freshrec.data.OpenBanditReader`) becomes an impression with one candidate, and a
click becomes an action ``click_delay_s`` seconds later (the data set records no click
time). The user's hashed features become user features, the item context becomes candidate
features, and the logging policy's propensity is kept as the candidate feature
``propensity_score``. Rows carry no user id, so the user is identified by the hash of
``user_feature_0..3``.

Examples
--------
>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> with open(os.path.join(d, "all.csv"), "w") as fh:
...     _ = fh.write(",timestamp,item_id,position,click,propensity_score,user_feature_0\\n")
...     _ = fh.write("0,2019-11-24 00:00:17.004+00:00,3,1,1,0.0125,81ce\\n")
...     _ = fh.write("1,2019-11-24 00:00:19.715+00:00,4,2,0,0.0125,2d03\\n")
>>> from freshrec.stream.events import decode
>>> [(e["type"], e["timestamp"]) for e in map(decode, (r for _, r in open_bandit_events(d)))]
[('impression', 1574553617), ('impression', 1574553619), ('action', 1574553622)]
"""

from __future__ import annotations

import heapq
import os
import zlib
from collections.abc import Iterator
from typing import Any

from freshrec.data.obd import OpenBanditReader
from freshrec.stream.events import SCHEMA_VERSION, encode

__all__ = ["open_bandit_events"]

_SKIP = {"event_time", "item_id", "position", "label"}


def open_bandit_events(
    path: str | os.PathLike[str], *, click_delay_s: int = 5, with_affinity: bool = False
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(request_id, encoded event)`` for an Open Bandit campaign directory, in event
    time order (impressions in file order, clicks merged in at their time)."""
    heap: list[tuple[int, int, str, bytes]] = []
    n = 0
    for batch in OpenBanditReader(path):
        cols = batch.to_pydict()
        user_cols = [c for c in cols if c.startswith("user_feature")]
        if with_affinity:
            user_cols += [c for c in cols if c.startswith("user_item_affinity")]
        item_cols = [
            c
            for c in cols
            if c not in _SKIP and c not in user_cols and not c.startswith("user_item_affinity")
        ]
        for i in range(batch.num_rows):
            ts = int(cols["event_time"][i])
            while heap and heap[0][0] <= ts:
                _, _, r, payload = heapq.heappop(heap)
                yield r, payload
            rid = f"obd{n}"
            user = {c: cols[c][i] for c in user_cols}
            uid = zlib.crc32(
                "|".join(str(user[c]) for c in user_cols if c.startswith("user_feature")).encode()
            )
            item = int(cols["item_id"][i])
            imp: dict[str, Any] = {
                "v": SCHEMA_VERSION,
                "type": "impression",
                "event_id": f"obd-i{n}",
                "request_id": rid,
                "user_id": uid,
                "timestamp": ts,
                "user": user,
                "candidates": [
                    {
                        "item_id": item,
                        "position": int(cols["position"][i]),
                        "features": {c: cols[c][i] for c in item_cols},
                    }
                ],
            }
            yield rid, encode(imp)
            if cols["label"][i] and cols["label"][i] > 0:
                act = {
                    "v": SCHEMA_VERSION,
                    "type": "action",
                    "event_id": f"obd-a{n}",
                    "request_id": rid,
                    "item_id": item,
                    "action": "click",
                    "timestamp": ts + click_delay_s,
                }
                heapq.heappush(heap, (ts + click_delay_s, n, rid, encode(act)))
            n += 1
    while heap:
        _, _, r, payload = heapq.heappop(heap)
        yield r, payload
