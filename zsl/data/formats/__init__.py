"""Dataset file formats behind one small registry, the only way benchmarks are read.

``data.format`` names a module that reads a benchmark for one protocol (``read``, a
:class:`FormatReader`) and writes one (``write_splits`` / ``write_features``). ``xlsa17``
(Xian et al.'s proposed split, MATLAB files) is built in; a new format adds a module with the
same three functions and one entry in :data:`FORMATS`. The training run and
:class:`zsl.data.datamodule.ZSLDataModule` both read through :func:`read_dataset`."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch: imported with the readers, not with this registry
    from zsl.data.types import ProtocolName, ZSLData

#: format name -> module that defines ``read`` (and the writers)
FORMATS: dict[str, str] = {"xlsa17": "zsl.data.formats.xlsa17"}


class FormatReader(Protocol):
    """The ``read`` function of a format module.

    Reads ``<root>/<name>`` (features in ``feature_file``, class semantics under
    ``semantics_key``) for ``protocol`` (``"val"`` or ``"test"``) into a validated
    :class:`~zsl.data.types.ZSLData` with 0-based labels and split indices;
    ``exclude_test_from_val``: the val protocol drops test images from its splits. Problems
    in the files are raised as :class:`~zsl.data.errors.DataError`."""

    def __call__(
        self,
        root: str | Path,
        name: str,
        feature_file: str,
        protocol: ProtocolName,
        semantics_key: str,
        exclude_test_from_val: bool,
    ) -> ZSLData: ...


def get_format(name: str) -> ModuleType:
    """The module of a registered format; unknown names fail listing what exists."""
    if name not in FORMATS:
        raise KeyError(f"unknown data format {name!r}; available: {', '.join(sorted(FORMATS))}")
    return importlib.import_module(FORMATS[name])


def get_reader(name: str) -> FormatReader:
    """The ``read`` function of the registered format ``name``."""
    reader: FormatReader = get_format(name).read
    return reader


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
    return get_reader(fmt)(root, name, feature_file, protocol, semantics_key, exclude_test_from_val)
