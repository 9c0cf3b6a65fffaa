"""Shared fixtures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the property tests on a fixed sequence of examples, so a red CI is reproducible and
# never depends on the draw; locally they explore new examples on every run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: ``start_redis`` options of a server a test kills and restarts: every acknowledged write
#: is on disk (append-only file, fsync before the reply) and comes back.
DURABLE = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests using it skip (with the reason) elsewhere."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data sets at {SHARED_DATA} (present in CI)")
    return SHARED_DATA


def free_ports(n: int) -> list[int]:
    """``n`` different TCP ports on loopback that nobody listens on (now)."""
    import contextlib
    import socket

    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def start_redis(workdir: Path, port: int | None = None, *extra: str):
    """Start a real ``redis-server`` on loopback in ``workdir``; returns ``(process, port)``.

    Runs ``scripts/ensure-redis`` first when ``redis-server`` is not on PATH. ``extra`` are
    more server options (e.g. ``--appendonly yes`` for a server that is killed and restarted).
    """
    import shutil
    import socket
    import time

    if shutil.which("redis-server") is None:
        script = Path(__file__).resolve().parents[1] / "scripts" / "ensure-redis"
        subprocess.run(["bash", str(script)], check=True)
    if port is None:
        port = free_ports(1)[0]
    args = ["--save", "", "--appendonly", "no"] if not extra else list(extra)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--daemonize", "no", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM ``proc`` and wait; SIGKILL it if it is still there ``timeout_s`` later."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A real ``redis-server`` on a free loopback port, no persistence; yields its URL."""
    proc, port = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)


class RedisClusterNodes:
    """A real Redis Cluster of ``redis-server`` masters on free loopback ports, no replicas.

    Every node has its own directory under ``workdir`` (``nodes.conf`` and the append-only
    file, fsync before each reply), so a node killed with SIGKILL and restarted
    (:meth:`kill`, :meth:`restart`) comes back with its slots and every acknowledged write.
    :meth:`start` starts the nodes, joins them with ``redis-cli --cluster create`` and waits
    for ``cluster_state:ok`` on each; :meth:`stop` ends them.
    """

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.workdir = workdir
        # client port -> cluster bus port (given: port + 10000 may be taken or past 65535)
        ports = free_ports(2 * masters)
        self.bus = dict(zip(ports[:masters], ports[masters:], strict=True))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL with the first node as the seed."""
        return f"redis+cluster://127.0.0.1:{next(iter(self.bus))}/0"

    def _start_node(self, port: int) -> None:
        d = self.workdir / f"node-{port}"
        d.mkdir(parents=True, exist_ok=True)
        self.procs[port], _ = start_redis(
            d, port, "--cluster-enabled", "yes", "--cluster-port", str(self.bus[port]),
            "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000", *DURABLE)

    def start(self) -> RedisClusterNodes:
        import shutil

        for port in self.bus:
            self._start_node(port)
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not on PATH (it comes with redis-server: "
                               "scripts/ensure-redis)")
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.bus],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_ok()
        return self

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Wait until every node reports ``cluster_state:ok``."""
        import time

        import redis

        deadline = time.monotonic() + timeout_s
        for port in self.bus:
            r = redis.Redis(port=port, socket_timeout=1.0)
            try:
                while b"cluster_state:ok" not in r.execute_command("CLUSTER", "INFO",
                                                                   NEVER_DECODE=True):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"redis cluster node {port} not ok after "
                                           f"{timeout_s}s")
                    time.sleep(0.05)
            finally:
                r.close()

    def node_of(self, key: str) -> int:
        """The port of the master serving ``key``."""
        import redis

        r = redis.Redis(port=next(iter(self.bus)))
        try:
            slot = r.execute_command("CLUSTER", "KEYSLOT", key)
            for start, end, master, *_ in r.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        finally:
            r.close()
        raise RuntimeError(f"no master serves {key!r} (slot {slot})")

    def move(self, key: str, port: int) -> None:
        """Migrate the slot of ``key``, with its keys, to the master on ``port`` (what
        resharding does: IMPORTING/MIGRATING, MIGRATE the keys, then the new owner)."""
        import redis

        src, dst = redis.Redis(port=self.node_of(key)), redis.Redis(port=port)
        try:
            slot = src.execute_command("CLUSTER", "KEYSLOT", key)
            src_id, dst_id = (r.execute_command("CLUSTER", "MYID") for r in (src, dst))
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
            for p in self.bus:
                with redis.Redis(port=p) as r:
                    r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        finally:
            src.close()
            dst.close()

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``."""
        self.procs[port].kill()
        self.procs[port].wait()

    def restart(self, port: int) -> None:
        """Start the node on ``port`` again (same directory: its AOF and nodes.conf)."""
        self._start_node(port)

    def stop(self) -> None:
        """End every node."""
        for proc in self.procs.values():
            stop_process(proc)


@pytest.fixture(scope="session")
def redis_cluster_nodes(tmp_path_factory: pytest.TempPathFactory):
    """A real Redis Cluster of 3 masters (:class:`RedisClusterNodes`), started."""
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield nodes.start()
    finally:
        nodes.stop()


@pytest.fixture(scope="session")
def redis_cluster(redis_cluster_nodes: RedisClusterNodes) -> str:
    """The ``redis+cluster://`` URL of the session's Redis Cluster."""
    return redis_cluster_nodes.url
