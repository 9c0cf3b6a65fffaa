"""One rank of ``freshrec train`` (batch or ``--online``) under torchrun, and the
``--nproc`` shorthand's launch."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import torch.distributed as dist
import yaml

from freshrec.dist.launch import init_ranks
from freshrec.dist.trainer import DistTrainer
from freshrec.errors import ConfigError, InputError

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig

__all__ = ["train_rank", "online_rank", "rank_files", "write_run_config"]

log = logging.getLogger(__name__)


def write_run_config(config: FreshrecConfig, run_dir: str | Path) -> Path:
    """Write the run's whole config document (overrides applied) to ``run_dir/config.yaml``:
    what every rank started by ``--nproc`` reads."""
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config.raw), sort_keys=False))
    return path


def train_rank(config: FreshrecConfig, run_dir: str | Path,
               make_reader: Callable[[], Iterable[pa.RecordBatch]], *,
               resume: bool) -> tuple[DistTrainer, dict[str, Any]]:
    """Join the process group, train this rank's slices and return the trainer and summary.

    The run resumes from its newest checkpoint when ``resume`` is set or when torchrun
    restarted the ranks (``TORCHELASTIC_RESTART_COUNT`` > 0). An input that cannot be
    opened or read fails with an :class:`InputError` naming the rank and the input.
    """
    init_ranks(config.dist)
    rank = dist.get_rank()
    try:
        trainer = DistTrainer(config, run_dir)
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        if (resume or restarted) and trainer.resume():
            log.info("rank=%d resumed step=%d restarted=%s", rank, trainer.step, restarted)
        trainer.input_name = config.data.path or trainer.input_name
        if trainer.own_files:
            files = rank_files(config, rank, trainer.world)
            log.info("rank=%d reads %d files: %s", rank, len(files), [str(f) for f in files])
            make_reader = _files_reader(config, files)

        def reader() -> Iterator[pa.RecordBatch]:
            try:
                yield from make_reader()
            except (OSError, InputError) as e:
                raise InputError(f"rank {rank}: input {trainer.input_name!r}: {e}") from e

        return trainer, trainer.fit(reader)
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
    a single-process online run does, so a rank restarted by torchrun resumes too)."""
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
        summary = online.run(idle_timeout_s=o.idle_timeout_s if o.idle_timeout_s > 0
                             else float("inf"))
        return online.dist, summary
    finally:
        dist.destroy_process_group()
