"""MATLAB ``.mat`` files as the benchmarks ship them: reading with one clear error per problem
(a missing file, an HTML error page saved under a ``.mat`` name, MATLAB v7.3, a missing key,
non-numeric or non-finite values) and writing them atomically, with the cell arrays and
1-based index columns MATLAB code expects."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from zsl.data.errors import DataError

__all__ = [
    "check_finite",
    "check_informative",
    "get_key",
    "loc_column",
    "matlab_cell",
    "numeric",
    "read_mat",
    "savemat_atomic",
    "strings",
]


def read_mat(path: Path) -> dict[str, Any]:
    """The variables of the MATLAB (v5-v7) file ``path``, or a DataError saying why not."""
    if not path.is_file():
        raise DataError(str(path), "file not found")
    with open(path, "rb") as fh:
        head = fh.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head")):
        raise DataError(
            str(path),
            "an HTML page, not a MATLAB file (a failed or redirected download); download it again",
        )
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5)
        raise DataError(
            str(path), f"MATLAB v7.3 files are not supported, re-save as v7: {err}"
        ) from None
    except Exception as err:  # noqa: BLE001 - scipy raises many types for corrupt files
        raise DataError(
            str(path), f"cannot read MATLAB file ({type(err).__name__}: {err})"
        ) from None


def get_key(mat: Mapping[str, Any], key: str, path: Path) -> Any:
    """``mat[key]``, or a DataError naming the keys the file has."""
    if key not in mat:
        present = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path}[{key!r}]", f"missing key; the file has {present}")
    return mat[key]


def strings(cell: Any) -> tuple[str, ...]:
    """The strings of a MATLAB cell array (N x 1 or 1 x N), in order."""
    out = []
    for item in np.asarray(cell, dtype=object).ravel():
        while isinstance(item, np.ndarray):
            item = item.ravel()[0] if item.size else ""
        out.append(str(item))
    return tuple(out)


def numeric(raw: Any, where: str) -> np.ndarray:
    """A numeric array, or a DataError naming the key (e.g. a name list given as semantics)."""
    arr = np.asarray(raw)
    if np.iscomplexobj(arr):
        raise DataError(
            where, f"complex values ({arr.dtype}): ZSL features and semantics are real numbers"
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise DataError(where, f"expected a numeric matrix, got {arr.dtype} values")
    return arr


def check_finite(array: np.ndarray, where: str, block: int = 1 << 16) -> None:
    """Raise a DataError naming the first non-finite value; checks ``block`` rows at a time so
    that a memory-mapped array is never read whole."""
    total, first = 0, None
    for start in range(0, max(array.shape[0], 1), block):
        bad = ~np.isfinite(array[start : start + block])
        count = int(bad.sum())
        if count and first is None:
            hit = np.argwhere(bad)[0]
            first = (int(hit[0]) + start, *(int(i) for i in hit[1:]))
        total += count
    if total:
        raise DataError(where, f"{total} non-finite values (first at index {first})")


def check_informative(features: np.ndarray, where: str, block: int = 1 << 14) -> None:
    """Refuse an all-zero feature matrix (every image alike: chance accuracy at best) and warn,
    naming the first, when some images have all-zero features. Reads ``block`` rows at a
    time (a memory-mapped array is never read whole)."""
    zero_rows, first = 0, None
    for start in range(0, features.shape[0], block):
        empty = ~np.any(features[start : start + block] != 0, axis=1)
        count = int(empty.sum())
        if count and first is None:
            first = start + int(np.flatnonzero(empty)[0])
        zero_rows += count
    if features.shape[0] and zero_rows == features.shape[0]:
        raise DataError(where, "every feature is zero: the images cannot be told apart")
    if zero_rows:
        warnings.warn(
            f"{where}: {zero_rows} of {features.shape[0]} images have all-zero features (first: "
            f"row {first}, 0-based); they score alike for every class",
            stacklevel=3,
        )


def matlab_cell(strings: Sequence[str]) -> np.ndarray:
    """A MATLAB cell array (N x 1) of strings, as ``scipy.io.savemat`` writes it."""
    cell = np.empty((len(strings), 1), dtype=object)
    for i, value in enumerate(strings):
        cell[i, 0] = np.array([value])  # pre-wrapped as a char array: a faster savemat
    return cell


def loc_column(indices0: np.ndarray) -> np.ndarray:
    """0-based image indices -> the file's 1-based column vector."""
    return (np.asarray(indices0, dtype=np.int64) + 1).reshape(-1, 1).astype(np.float64)


def savemat_atomic(path: Path, content: dict[str, Any]) -> None:
    """``scipy.io.savemat`` into a temporary file renamed over ``path`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own per writer: concurrent processes (DDP ranks, multirun jobs) may
    # generate the same file at once, and the last complete rename wins
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as handle:
            scipy.io.savemat(handle, content, do_compression=False, oned_as="column")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
