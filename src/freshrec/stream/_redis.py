"""Redis clients (one server or a Redis Cluster) and the key layout of a Redis log.

A URL ``redis://HOST:PORT/DB`` or ``unix://PATH`` names one server;
``redis+cluster://HOST:PORT/0`` names a Redis Cluster through one of its nodes (the seed):
the client asks it for the other nodes and for the node that serves each hash slot, sends
every command to the node of its key, and refreshes that map when a node answers MOVED or
ASK, is lost, or reports CLUSTERDOWN.

The keys of the log ``NAME`` (:class:`RedisKeys`) carry one hash tag per partition, the part
in braces, which alone decides the hash slot of a key. The keys that one operation uses
together (an append's stream and its token; a partition's stream and its commits) share
their partition's tag, so they sit in one slot, on one node; the streams of different
partitions have different tags, so they spread over the nodes of a cluster:

- ``{NAME:p<i>}``: the stream of partition ``i``;
- ``{NAME:p<i>}:commits``: hash of group -> committed offset in partition ``i``;
- ``{NAME:p<i>}:append:<writer>:<n>``: the token of one append to partition ``i``
  (expires);
- ``NAME:partitions``: the number of partitions (read and written alone).

On one server the same keys are used (a tag there is just two characters of the name).

Examples
--------
>>> keys = RedisKeys("events")
>>> keys.stream(3), keys.commits(3), keys.partitions
('{events:p3}', '{events:p3}:commits', 'events:partitions')
>>> keys.partition_of("{events:p3}"), keys.partition_of("{events:p3}:commits")
(3, None)
>>> keys.legacy_partition_of("events:p3")
3
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from freshrec.errors import ConfigError

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster

    Client: TypeAlias = redis.Redis | RedisCluster

__all__ = ["CLUSTER_SCHEME", "RedisKeys", "connect", "is_lost", "scheme_checked"]

#: The URL scheme of a Redis Cluster: ``redis+cluster://HOST:PORT/0`` (any node of it).
CLUSTER_SCHEME = "redis+cluster://"


@dataclass(frozen=True)
class RedisKeys:
    """The keys of the Redis log ``name`` (see the module docstring).

    Parameters
    ----------
    name : str
        The log's name (without braces: they would change the hash tags).
    """

    name: str

    def stream(self, partition: int) -> str:
        """The stream of ``partition``; its hash tag is the whole key."""
        return f"{{{self.name}:p{partition}}}"

    def commits(self, partition: int) -> str:
        """The hash of committed offsets (field: the group) of ``partition``."""
        return f"{self.stream(partition)}:commits"

    def token(self, partition: int, writer: str, n: int) -> str:
        """The token of the ``n``-th append of ``writer`` to ``partition``."""
        return f"{self.stream(partition)}:append:{writer}:{n}"

    @property
    def partitions(self) -> str:
        """The key holding the number of partitions."""
        return f"{self.name}:partitions"

    @property
    def scan_pattern(self) -> str:
        """A ``SCAN MATCH`` pattern that every stream key matches, legacy keys included."""
        return "*" + re.sub(r"([*?\[\]\\])", r"\\\1", self.name) + ":p*"

    def partition_of(self, key: str) -> int | None:
        """The partition whose stream ``key`` is; None for any other key."""
        m = re.fullmatch(r"\{" + re.escape(self.name) + r":p(\d+)\}", key)
        return int(m.group(1)) if m else None

    def legacy_partition_of(self, key: str) -> int | None:
        """The partition of a stream in the layout before hash tags (``NAME:p<i>``)."""
        m = re.fullmatch(re.escape(self.name) + r":p(\d+)", key)
        return int(m.group(1)) if m else None


def connect(url: str, name: str) -> Client:
    """A client for ``url`` (a cluster client for ``redis+cluster://``) that never retries
    by itself: the caller retries, logs and counts (MOVED and ASK are still followed).

    Raises
    ------
    ConfigError
        The redis client (the ``redis`` extra) is not installed.

    Examples
    --------
    >>> client = connect("redis://127.0.0.1:6379/0", "events")  # connects on first use
    >>> type(client).__name__
    'Redis'
    >>> client.close()
    """
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.cluster import RedisCluster
        from redis.connection import parse_url
        from redis.retry import Retry
    except ImportError as e:
        raise ConfigError(f"redis log {name!r} at {url}: needs the redis client: "
                          "pip install 'freshrec[redis]'") from e
    if url.startswith(CLUSTER_SCHEME):
        # not RedisCluster.from_url: its node clients do not close their pools on close()
        options = parse_url(  # type: ignore[no-untyped-call]  # unannotated in redis-py
            "redis://" + url.removeprefix(CLUSTER_SCHEME))
        options.pop("db", None)
        return RedisCluster(**options, retry=Retry(NoBackoff(), 0))
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0))


def is_lost(e: BaseException) -> bool:
    """Whether ``e`` says the server (or the cluster node of a key) is out of reach for now:
    connection refused or dropped, timeout, a restarted server still loading its data,
    CLUSTERDOWN while a cluster heals, TRYAGAIN while a slot migrates (also once the client
    gave up following redirections: "TTL exhausted"), or a slot map that could not be
    fetched because no node answered.

    Examples
    --------
    >>> from redis.exceptions import ClusterDownError, ConnectionError, ResponseError
    >>> is_lost(ConnectionError("refused")), is_lost(ClusterDownError("CLUSTERDOWN"))
    (True, True)
    >>> is_lost(ResponseError("WRONGTYPE Operation against a key holding the wrong kind"))
    False
    """
    from redis import exceptions as x

    lost = (x.ConnectionError, x.TimeoutError, x.ClusterError, x.TryAgainError,
            x.SlotNotCoveredError)
    return isinstance(e, lost) or (isinstance(e, x.RedisClusterException)
                                   and isinstance(e.__cause__, lost))


@contextlib.contextmanager
def scheme_checked(url: str, name: str) -> Iterator[None]:
    """Turn an error that says ``url`` has the wrong scheme into a :class:`ConfigError`: a
    one-server URL got a MOVED redirection from a node of a Redis Cluster, or a cluster URL
    names a server without cluster mode.

    Raises
    ------
    ConfigError
        Either of those happened inside the block.

    Examples
    --------
    >>> from redis.exceptions import MovedError
    >>> with scheme_checked("redis://10.0.0.5:7000/0", "events"):
    ...     raise MovedError("3999 10.0.0.6:7001")
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: redis log 'events': redis://10.0.0.5:7000/0 is a node of a Redis Cluster (it answered MOVED); open it as redis+cluster://10.0.0.5:7000/0
    """
    from redis.exceptions import MovedError, RedisClusterException

    try:
        yield
    except (MovedError, RedisClusterException) as e:
        rest = url.split("://", 1)[-1]
        if isinstance(e, MovedError):
            raise ConfigError(f"redis log {name!r}: {url} is a node of a Redis Cluster (it "
                              f"answered MOVED); open it as {CLUSTER_SCHEME}{rest}") from e
        if "Cluster mode is not enabled" in str(e):
            raise ConfigError(f"redis log {name!r}: {url} is not a node of a Redis Cluster "
                              f"(cluster mode is not enabled); open it as redis://{rest}"
                              ) from e
        raise
