"""Dataset file formats behind one small registry: ``data.format`` names a module that
reads a benchmark for one protocol (``read``) and writes one (``write_splits`` /
``write_features``). ``xlsa17`` (Xian et al.'s proposed split, MATLAB files) is built in; a
new format adds a module with the same three functions and one line here."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch: imported with the readers, not with this registry
    from zsl.data.types import ProtocolName, ZSLData

FORMATS: dict[str, str] = {"xlsa17": "zsl.data.formats.xlsa17"}


def get_format(name: str) -> ModuleType:
    """The module of a registered format; unknown names fail listing what exists."""
    if name not in FORMATS:
        raise KeyError(f"unknown data format {name!r}; available: {', '.join(sorted(FORMATS))}")
    return importlib.import_module(FORMATS[name])


def read_dataset(
    fmt: str,
    root: str | Path,
    name: str,
    feature_file: str,
    protocol: ProtocolName,
    semantics_key: str = "att",
    exclude_test_from_val: bool = True,
) -> ZSLData:
    """Read ``<root>/<name>`` in format ``fmt`` for one protocol (``exclude_test_from_val``:
    the val protocol drops test images from its splits)."""
    module = get_format(fmt)
    data: ZSLData = module.read(
        root, name, feature_file, protocol, semantics_key, exclude_test_from_val
    )
    return data
