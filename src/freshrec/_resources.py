"""Folders that ship beside the package: ``benchmarks/`` and ``configs/`` (private)."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["shipped_dir"]


def shipped_dir(name: str) -> Path:
    """The folder ``name`` of the source checkout this package is installed from, or the copy
    an install puts in ``<prefix>/share/freshrec/<name>``.

    Examples
    --------
    >>> (shipped_dir("configs") / "demo.yaml").is_file()
    True
    """
    checkout = Path(__file__).resolve().parents[2] / name
    installed = Path(sys.prefix) / "share" / "freshrec" / name
    return checkout if checkout.is_dir() or not installed.is_dir() else installed
