"""One rank of ``freshrec train`` (batch or ``--online``) under torchrun, and the
``--nproc`` shorthand's launch."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import torch.distributed as dist
import yaml

from freshrec.dist.launch import init_ranks
from freshrec.dist.trainer import DistTrainer
from freshrec.errors import ConfigError, InputError
from freshrec.train.trainer import Trainer

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig

__all__ = ["StopSignal", "train_rank", "online_rank", "rank_files", "write_run_config"]

log = logging.getLogger(__name__)


def write_run_config(config: FreshrecConfig, run_dir: str | Path) -> Path:
    """Write the run's whole config document (overrides applied) to ``run_dir/config.yaml``:
    what every rank started by ``--nproc`` reads."""
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config.raw), sort_keys=False))
    return path


class StopSignal:
    """SIGINT and SIGTERM ask the run to stop instead of killing the rank: the handler only
    sets a flag, which the ranks agree on at their next step (batch) or round (online), so
    that every rank stops at the same one, writes its part of one checkpoint and exits 0. A
    second signal raises :class:`KeyboardInterrupt` (stop at once, no checkpoint).

    Used as a context manager around the run (handlers are installed in the main thread
    only, and the previous ones restored on exit); the instance is the ``stop`` callable.

    >>> with StopSignal() as stop:
    ...     stop()
    False
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        #: The name of the first signal received, or None.
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            raise KeyboardInterrupt(f"{name} again: stopping without a checkpoint")
        self.received = name
        log.warning("%s: the ranks stop at their next step (or round), write a checkpoint "
                    "and exit; %s again stops at once", name, name)


class _Stopped(Exception):
    """The ranks agreed to stop a batch run (:class:`StopSignal`); its checkpoint is written."""


class _StoppableTrainer(DistTrainer):
    """A :class:`DistTrainer` whose ranks agree before every step whether any of them was
    asked to stop (:attr:`stop`). The step they agree on is trained as a checkpoint step
    (without the lookup of the next batch ahead of it, which a checkpoint must not hold);
    :attr:`stopping` then says the fit ends after it."""

    def __init__(self, config: FreshrecConfig, run_dir: str | Path,
                 stop: Callable[[], bool]) -> None:
        super().__init__(config, run_dir)
        self.stop = stop
        self.stopping = False

    def _checkpoint_due(self, step: int) -> bool:
        due = super()._checkpoint_due(step)
        self.stopping = self.stopping or self.exchange.any(self.stop())
        return due or self.stopping


def train_rank(config: FreshrecConfig, run_dir: str | Path,
               make_reader: Callable[[], Iterable[pa.RecordBatch]], *,
               resume: bool) -> tuple[DistTrainer, dict[str, Any]]:
    """Join the process group, train this rank's slices and return the trainer and summary.

    The run resumes from its newest checkpoint when ``resume`` is set or when torchrun
    restarted the ranks (``TORCHELASTIC_RESTART_COUNT`` > 0). An input that cannot be
    opened or read fails with an :class:`InputError` naming the rank and the input.
    SIGINT or SIGTERM (to any rank, or to torchrun, which passes it on) stops every rank
    after the same step with one checkpoint (:class:`StopSignal`); the summary then says
    ``interrupted``, and ``--resume`` continues exactly there.
    """
    init_ranks(config.dist)
    rank = dist.get_rank()
    try:
        with StopSignal() as stop:
            trainer = _StoppableTrainer(config, run_dir, stop)
            restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
            if (resume or restarted) and trainer.resume():
                log.info("rank=%d resumed step=%d restarted=%s", rank, trainer.step,
                         restarted)
            trainer.input_name = config.data.path or trainer.input_name
            if trainer.own_files:
                files = rank_files(config, rank, trainer.world)
                log.info("rank=%d reads %d files: %s", rank, len(files),
                         [str(f) for f in files])
                make_reader = _files_reader(config, files)

            def reader() -> Iterator[pa.RecordBatch]:
                try:
                    yield from make_reader()
                except (OSError, InputError) as e:
                    raise InputError(f"rank {rank}: input {trainer.input_name!r}: {e}") from e

            def on_step(t: Trainer, _metrics: dict[str, float]) -> None:
                if trainer.stopping:
                    trainer.save()
                    raise _Stopped

            try:
                summary = trainer.fit(reader, on_step=on_step)
            except _Stopped:
                log.info("rank=%d stopped by a signal at step=%d, checkpoint written", rank,
                         trainer.step)
                summary = {**trainer.finish(), "interrupted": True}
        # leave together: a rank that tears its gloo groups down while another is still in
        # the last collective can make that one abort at exit ("terminate called without an
        # active exception": 2 of 6 two-rank online runs without this barrier, 0 of 6 with)
        trainer.exchange.barrier()
        return trainer, summary
    finally:
        dist.destroy_process_group()


def rank_files(config: FreshrecConfig, rank: int, world: int) -> list[Path]:
    """The input files ``rank`` of ``world`` reads with ``dist.slicing: files``: files
    ``rank, rank + world, ...`` of the sorted files of ``data.path`` (a directory or a glob
    of tabular files). A rank may get none (more ranks than files); the files of all ranks
    are every file once.

    Raises
    ------
    ConfigError
        ``data.path`` is not a set of several files.
    """
    from freshrec.data.readers import open_reader

    d = config.data
    files = list(getattr(open_reader(d.format, d.path, chunk_rows=d.chunk_rows,
                                     **dict(d.options)), "files", []))
    if len(files) < 2:
        raise ConfigError(f"dist.slicing=files: data.path {d.path!r} (format {d.format!r}) is "
                          f"not several files; give a directory or a glob of tabular files, "
                          f"or set dist.slicing=rows")
    return files[rank::world]


def _files_reader(config: FreshrecConfig, files: list[Path]
                  ) -> Callable[[], Iterator[pa.RecordBatch]]:
    """A reader over ``files`` one after the other, an error naming the file."""
    from freshrec.data.readers import open_reader

    d = config.data

    def read() -> Iterator[pa.RecordBatch]:
        for f in files:
            try:
                yield from open_reader(d.format, f, chunk_rows=d.chunk_rows, **dict(d.options))
            except (OSError, InputError) as e:
                raise InputError(f"{f}: {e}") from e

    return read


def online_rank(config: FreshrecConfig, run_dir: str | Path) -> tuple[DistTrainer, dict[str, Any]]:
    """Join the process group and train this rank's partitions of ``online.source`` until
    the log is idle for ``online.idle_timeout_s`` (0: forever); returns the rank's trainer
    and the run's summary. The run resumes from its newest checkpoint, if any (always, as
    a single-process online run does, so a rank restarted by torchrun resumes too).
    SIGINT or SIGTERM stops every rank after the same round, which checkpoints and publishes
    what it trained (:class:`StopSignal`; the summary says ``interrupted``)."""
    from freshrec.dist.online import DistOnlineTrainer
    from freshrec.stream.open import open_log
    from freshrec.sync import Registry

    o = config.online
    if not o.source:
        raise ConfigError("--online needs --source (or online.source: the joined-examples log)")
    init_ranks(config.dist)
    try:
        online = DistOnlineTrainer(config, open_log(o.source, partitions=o.partitions),
                                   run_dir=run_dir,
                                   registry=Registry(o.registry) if o.registry else None)
        log.info("rank=%d partitions=%s offsets=%s lag=%d records", online.rank,
                 sorted(online.offsets), online.offsets, online.lag())
        with StopSignal() as stop:
            summary = online.run(idle_timeout_s=o.idle_timeout_s if o.idle_timeout_s > 0
                                 else float("inf"), stop=stop)
        if online.exchange.any(stop()):
            summary["interrupted"] = True
        online.exchange.barrier()  # leave together (see train_rank)
        return online.dist, summary
    finally:
        dist.destroy_process_group()
