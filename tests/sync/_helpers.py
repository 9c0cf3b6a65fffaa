"""A small training-like model for the sync tests: tables, dense params, random writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from freshrec.sync import Registry
from freshrec.table import AdmissionConfig, EmbeddingTable, OptimizerConfig, TableConfig

UNIVERSE = 3000


def table_configs() -> list[TableConfig]:
    """Three layouts: Adagrad with TTL and admission, row-wise Adagrad, FTRL with TTL."""
    return [
        TableConfig(name="user", dim=8, ttl_s=40,
                    optimizer=OptimizerConfig(kind="adagrad", lr=0.1),
                    admission=AdmissionConfig(min_count=2, sketch_width=1024)),
        TableConfig(name="item", dim=4, optimizer=OptimizerConfig(kind="rowwise_adagrad")),
        TableConfig(name="ad", dim=3, ttl_s=25, optimizer=OptimizerConfig(kind="ftrl")),
    ]


def make_tables() -> dict[str, EmbeddingTable]:
    return {c.name: EmbeddingTable(c) for c in table_configs()}


class Dense(torch.nn.Module):
    """Dense part with a float32 layer and a bfloat16 buffer (stored bit-exactly)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 2)
        self.register_buffer("scale", torch.ones(3, dtype=torch.bfloat16))

    def perturb(self, gen: torch.Generator) -> None:
        with torch.no_grad():
            for p in self.fc.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)
            self.scale.add_(torch.randn(3, generator=gen).to(torch.bfloat16))


def train_step(rng: np.random.Generator, tables: dict[str, EmbeddingTable], now: int,
               batch: int = 150) -> None:
    """Lookups with admission, one optimizer step per looked-up fid, then expiry."""
    for t in tables.values():
        hot = rng.integers(0, 50, size=batch // 3)
        cold = rng.integers(0, UNIVERSE, size=batch - batch // 3)
        fids = np.concatenate([hot, cold]).astype(np.uint64)
        t.lookup(fids, now=now, train=True)
        grads = rng.standard_normal((fids.shape[0], t.dim)).astype(np.float32)
        t.apply_gradients(fids, grads, now=now)
        t.expire(now)


def contents(table: EmbeddingTable) -> dict[str, np.ndarray]:
    """The table's live rows sorted by fid (what ``save`` writes), read without changing it."""
    r = table.read_rows()
    assert r.states is not None
    return {"keys": r.fids, "values": r.values, "state": r.states, "last_seen": r.last_seen}


def assert_tables_equal(a: dict[str, EmbeddingTable], b: dict[str, EmbeddingTable],
                        *, with_state: bool) -> None:
    assert set(a) == set(b)
    for name in a:
        ca, cb = contents(a[name]), contents(b[name])
        assert ca["keys"].shape[0] > 0, name
        np.testing.assert_array_equal(ca["keys"], cb["keys"], err_msg=name)
        np.testing.assert_array_equal(ca["values"], cb["values"], err_msg=name)
        np.testing.assert_array_equal(ca["last_seen"], cb["last_seen"], err_msg=name)
        if with_state:
            np.testing.assert_array_equal(ca["state"], cb["state"], err_msg=name)


def assert_dense_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


#: Ways a version is damaged on disk: bytes flipped in an array file, an array file cut in
#: half, an array file deleted, a part's manifest deleted, the version's manifest deleted.
DAMAGE = ("corrupt", "truncate", "no_file", "no_part_manifest", "no_manifest")


def damage(reg: Registry, version: int, how: str) -> Path:
    """Damage one file of ``version`` (its first part's ``values.npy``, a manifest) as a disk
    or an operator would; returns the file."""
    vdir = reg.path_of(version)
    part = sorted(p for p in vdir.glob("*/*") if p.is_dir())[0]  # e.g. delta/ad or full/ad
    path = {"no_manifest": vdir / "manifest.json",
            "no_part_manifest": part / "manifest.json"}.get(how, part / "values.npy")
    data = path.read_bytes()
    if how == "corrupt":
        path.write_bytes(data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:])
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        assert how in DAMAGE, how
        path.unlink()
    return path
