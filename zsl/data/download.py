"""Fetch, unpack and verify the xlsa17 release (Xian et al., "Zero-Shot Learning — A
Comprehensive Evaluation of the Good, the Bad and the Ugly", TPAMI 2018).

* :func:`download` fetches a URL to a file with a progress bar. An interrupted download
  leaves ``<file>.part``; the next call resumes it with an HTTP ``Range`` request (or starts
  over when the server ignores ranges) and the file appears only once complete. A server that
  stops sending ends the download after ``read_timeout`` seconds without a byte (see
  :func:`download` for the rule), keeping ``<file>.part`` to resume.
* :func:`unpack_xlsa17` checks every member of the archive (CRC) and copies the benchmark
  folders (``.../data/<DATASET>/*`` in the official zip) to ``<root>/<DATASET>/``.
* :func:`verify_xlsa17` reads every benchmark through the loader, both protocols, and returns
  one line per problem: a missing folder, file or key, an HTML page saved as a ``.mat`` file,
  0-based or out-of-range indices, shapes that disagree, splits that leak.

The layout verified, per benchmark ``<root>/<DATASET>/``:

* ``att_splits.mat``: ``att`` (attributes x classes), ``trainval_loc``, ``test_seen_loc``,
  ``test_unseen_loc``, ``train_loc``, ``val_loc`` (1-based image indices, column vectors),
  ``allclasses_names`` (all but FLO);
* ``res101.mat`` (or another ``feature_file``): ``features`` (D x images), ``labels``
  (images x 1, 1-based class indices into the columns of ``att``).
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Any

from zsl.data.errors import DataError

#: the official release (the README of the GBU paper's project page links it)
XLSA17_URL = "https://datasets.d2.mpi-inf.mpg.de/xian/xlsa17.zip"
#: the six attribute benchmarks of the release
XLSA17_DATASETS = ("APY", "AWA1", "AWA2", "CUB", "FLO", "SUN")

_CHUNK = 1 << 20
#: seconds :func:`download` waits for the next byte before it gives up (a stall)
DEFAULT_READ_TIMEOUT = 60.0


def download(
    url: str, dest: Path, *, progress: bool = True, read_timeout: float = DEFAULT_READ_TIMEOUT
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``); returns ``dest``.

    ``read_timeout`` is a per-read rule, not a deadline for the whole transfer: the connection,
    the response headers and every read of the body may each wait at most ``read_timeout``
    seconds for the next byte (a socket timeout on each read). A server that stalls therefore
    ends the download after ``read_timeout`` seconds of silence, while one that sends slowly
    but steadily is never cut off: the bytes go to ``dest.part`` (and the progress bar) as they
    arrive, so a slow link still finishes, and an interrupted one resumes where it stopped.

    Raises :class:`DataError` naming the URL on an HTTP or network error, on a stall longer
    than ``read_timeout`` and on a body shorter than its ``Content-Length`` (the partial file
    is kept: rerun to resume)."""
    if not read_timeout > 0:
        raise ValueError(f"read_timeout must be positive, got {read_timeout}")
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    response = _open(url, have, read_timeout)
    if response is None:  # the part file already holds the whole body
        part.replace(dest)
        return dest
    with response:
        done, total = _receive(response, url, part, have, dest.name, progress, read_timeout)
    if total is not None and done < total:
        raise DataError(url, f"download interrupted at {done} of {total} bytes; rerun to resume")
    part.replace(dest)
    return dest


def _open(url: str, have: int, read_timeout: float) -> Any:
    """The response to a request for ``url`` from byte ``have`` on; None when the server
    answers that range with 416 (nothing left to fetch)."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        return urllib.request.urlopen(request, timeout=read_timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            return None
        raise DataError(url, f"download failed: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError):
            raise DataError(
                url,
                f"download failed: no response within {read_timeout:g} s (--read-timeout); "
                "rerun to retry",
            ) from None
        raise DataError(url, f"download failed: {reason}") from None


def _receive(
    response: Any,
    url: str,
    part: Path,
    have: int,
    label: str,
    progress: bool,
    read_timeout: float,
) -> tuple[int, int | None]:
    """Append the body of ``response`` to ``part`` as it arrives (a resumed 206 response after
    the ``have`` bytes there, else from scratch); returns (bytes in ``part``, expected total
    or None)."""
    from tqdm.auto import tqdm

    resumed = have > 0 and response.status == 206
    length = response.headers.get("Content-Length")
    total = (int(length) + (have if resumed else 0)) if length is not None else None
    done = have if resumed else 0
    bar = tqdm(
        total=total, initial=done, unit="B", unit_scale=True, desc=label, disable=not progress
    )
    of_total = f" of {total}" if total is not None else ""
    try:
        with open(part, "ab" if resumed else "wb") as out:
            while True:
                # read1: whatever has arrived (up to a chunk), so that bytes received before
                # a stall are in the part file, not lost in a half-filled read buffer
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
    except TimeoutError:
        raise DataError(
            url,
            f"download stalled: no data for {read_timeout:g} s (--read-timeout) at {done}"
            f"{of_total} bytes; rerun to resume",
        ) from None
    except (HTTPException, OSError) as err:
        raise DataError(
            url,
            f"download interrupted at {done} of {total} bytes ({type(err).__name__}); "
            "rerun to resume",
        ) from None
    finally:
        bar.close()
    return done, total


def _dataset_of(member: str, datasets: Sequence[str]) -> tuple[str, str] | None:
    """``(DATASET, file name)`` for an archive member ``.../<DATASET>/<file>``."""
    parts = PurePosixPath(member).parts
    if len(parts) >= 2 and parts[-2] in datasets and not member.endswith("/"):
        return parts[-2], parts[-1]
    return None


def unpack_xlsa17(
    archive: Path, root: Path, datasets: Sequence[str] = XLSA17_DATASETS
) -> list[str]:
    """Copy the benchmark folders of ``archive`` to ``root/<DATASET>/``; returns the datasets
    found. Refuses an archive that is not a zip, or whose members fail their CRC check."""
    archive, root = Path(archive), Path(root)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(
            str(archive), f"not a readable zip archive ({err}); delete it and rerun"
        ) from None
    with zf:
        try:
            bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            bad = f"? ({err})"
        if bad is not None:
            raise DataError(
                str(archive), f"member {bad} is corrupt (CRC check failed); delete it and rerun"
            )
        found: list[str] = []
        for info in zf.infolist():
            target = _dataset_of(info.filename, datasets)
            if target is None:
                continue
            dataset, name = target
            folder = root / dataset
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.unpacking"
            with zf.open(info) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            tmp.replace(folder / name)
            if dataset not in found:
                found.append(dataset)
    return sorted(found)


def verify_xlsa17(
    root: Path, datasets: Sequence[str] = XLSA17_DATASETS, feature_file: str = "res101.mat"
) -> list[str]:
    """Problems found in ``root/<DATASET>/`` for every dataset, one line each (empty: all
    well). Each benchmark is read by the loader in both protocols, which checks the files
    (an HTML error page saved as ``.mat`` included), keys, shapes, the 1-based index ranges
    and the split invariants."""
    from zsl.data.formats import read_dataset

    problems: list[str] = []
    for dataset in datasets:
        folder = Path(root) / dataset
        if not folder.is_dir():
            problems.append(f"{folder}: dataset folder not found")
            continue
        for protocol in ("test", "val"):
            try:
                read_dataset("xlsa17", root, dataset, feature_file, protocol)
            except DataError as err:
                problems.append(" ".join(str(err).split()))
                break
    return problems
