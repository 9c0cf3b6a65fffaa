"""The HTTP connection protocol: uvicorn's httptools protocol with arrival stamps and a
header-read deadline.

Two things the ASGI app cannot see by itself:

* **when a request arrived.** :class:`StampedProtocol` stamps the scope with the
  ``perf_counter`` time at which the parser saw the end of the request
  (``scope["freshrec.arrived"]``: the whole body read, or the headers when the body is still
  coming). Scoring runs on the event loop's thread, so under overload requests wait in the
  loop's ready queue, not in the app; the app's admission control
  (:meth:`~freshrec.serve.app.HttpApi`) sheds a request whose wait already exceeds the queue
  budget, before any work is spent on it.
* **slow clients before the app is called.** A connection must deliver a request's headers
  within ``header_timeout_s`` of opening (or of its previous response finishing and the
  next request starting); otherwise it is closed and counted (slowloris: headers trickled a
  byte at a time, or a connection that sends nothing). The body deadline is the app's (the
  app reads the body).

Without httptools (the h11 fallback) requests carry no stamp: admission then bounds only
concurrency.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["ARRIVED", "StampedProtocol", "protocol_class"]

#: Scope key of the arrival stamp (``time.perf_counter()`` seconds).
ARRIVED = "freshrec.arrived"


class StampedProtocol(HttpToolsProtocol):
    """httptools protocol that stamps arrivals and closes connections slow to send headers.

    Class attributes set by :func:`protocol_class`: ``header_timeout_s`` and ``on_timeout``
    (called with ``"headers"`` for each connection closed for being slow).
    """

    header_timeout_s: float = 5.0
    on_timeout: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            if self.on_timeout is not None:
                self.on_timeout("headers")
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        _stamp(self.scope)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.scope is not None:
            _stamp(self.scope)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def _stamp(scope: Any) -> None:
    scope[ARRIVED] = time.perf_counter()


def protocol_class(header_timeout_s: float, on_timeout: Any) -> type[StampedProtocol]:
    """A :class:`StampedProtocol` subclass with its deadline and timeout callback set
    (uvicorn builds one protocol per connection from the class).

    >>> cls = protocol_class(2.0, None); cls.header_timeout_s
    2.0
    """
    return type("FreshrecProtocol", (StampedProtocol,),
                {"header_timeout_s": header_timeout_s, "on_timeout": on_timeout})
