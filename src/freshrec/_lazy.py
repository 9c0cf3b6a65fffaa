"""Package attributes imported on first use (PEP 562), so that importing a package for its
config does not import its heavy modules (torch, uvicorn, redis).

Examples
--------
>>> lazy_attribute("json", {"JSONDecoder": "decoder"}, "JSONDecoder").__name__
'JSONDecoder'
>>> lazy_attribute("json", {}, "nothing")
Traceback (most recent call last):
    ...
AttributeError: module 'json' has no attribute 'nothing'
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["lazy_attribute"]


def lazy_attribute(package: str, modules: Mapping[str, str], name: str) -> Any:
    """Attribute ``name`` of ``package``: imported from ``package.modules[name]``; a
    package's ``__getattr__`` returns this."""
    if name not in modules:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{package}.{modules[name]}"), name)
