"""Configuration of ``freshrec demo``: how long it runs, where it writes, which logs it uses.

Examples
--------
>>> DemoConfig(duration_s=20).startup_timeout_s
240.0
>>> DemoConfig(redis="localhost:6379")
Traceback (most recent call last):
...
freshrec.errors.ConfigError: DemoConfig: redis must be None or a redis:// or unix:// URL, got 'localhost:6379'
"""

from __future__ import annotations

from dataclasses import dataclass

from freshrec._validate import is_number, require

__all__ = ["DemoConfig"]


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """The ``demo`` section of the config document.

    The rest of the demo is configured by the other sections of the same document: the
    traffic by ``simulate`` (the driver sends ``requests_per_s`` requests per wall second),
    the joiner by ``join``, the server by ``serve``, and the model, its online training and
    its sync to serving by ``features``, ``model``, ``train``, ``online`` and ``sync``.

    Parameters
    ----------
    duration_s
        Seconds of traffic once the loop is up (start-up and shut-down come on top); with
        ``until_examples_trained`` an upper bound (a timeout) rather than the length.
    until_examples_trained
        Stop early, counted in events rather than seconds: once the trainer has trained at
        least this many examples, has an online AUC, and the server serves a version > 1
        (the loop closed). ``None``: run for ``duration_s``. Whether it was reached is
        ``until_reached`` in ``metrics.json``.
    workdir
        Where everything is written; ``None``: ``runs/demo-<timestamp>``.
    redis
        ``redis://HOST:PORT/DB``: Redis Streams for the logs instead of file logs.
    startup_timeout_s
        Longest wait for each stage to come up (generous: a loaded 2-core machine).
    user_store
        Where the ``user`` table lives: ``memory`` (in each process, served from the
        registry) or ``redis`` (shared by the trainer and the server through Redis:
        ``demo.redis``, or a private redis-server; see :mod:`freshrec.store.demo`).
    live
        Draw the live table (``None``: when stdout is a terminal; ``False``: a progress line
        every 5 s).
    """

    duration_s: float = 120.0
    workdir: str | None = None
    redis: str | None = None
    startup_timeout_s: float = 240.0
    live: bool | None = None
    until_examples_trained: int | None = None
    user_store: str = "memory"

    def __post_init__(self) -> None:
        o = "DemoConfig"
        for f in ("duration_s", "startup_timeout_s"):
            v = getattr(self, f)
            require(is_number(v) and v > 0, o, f, "a number > 0", v)
        require(self.workdir is None or (isinstance(self.workdir, str) and bool(self.workdir)),
                o, "workdir", "None or a directory", self.workdir)
        require(self.redis is None or (isinstance(self.redis, str)
                                       and self.redis.startswith(("redis://", "unix://"))),
                o, "redis", "None or a redis:// or unix:// URL", self.redis)
        u = self.until_examples_trained
        require(u is None or (isinstance(u, int) and not isinstance(u, bool) and u > 0), o,
                "until_examples_trained", "None or an integer > 0", u)
        require(self.live is None or isinstance(self.live, bool), o, "live",
                "None, true or false", self.live)
        require(self.user_store in ("memory", "redis"), o, "user_store",
                "memory or redis", self.user_store)
