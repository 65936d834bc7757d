"""``zsl-benchmark`` end to end on a small synthetic benchmark: cells in two worker processes
give the numbers of a sequential run, progress is reported per cell, the tables are written
(Markdown, CSV, LaTeX), every cell directory carries its settings hash (the same in worker
processes and in this one) and a rerun skips every finished cell. The reuse rule's edge cases
are in ``tests/adversarial/test_benchmark_cells.py``."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import SMALL_SYNTHETIC

from zsl.cli.benchmark import main

pytestmark = pytest.mark.slow

SMALL = SMALL_SYNTHETIC


def run(tmp: Path, name: str, *flags: str) -> None:
    main(
        ["--name", name, "--methods", "eszsl,sae", "--seeds", "0,1", "--datasets", "synthetic"]
        + ["--runs-dir", str(tmp / "runs"), "--results-dir", str(tmp / "results"), *flags]
        + ["--", f"data.root={tmp / 'data'}", *SMALL]
    )


def table(tmp: Path, name: str) -> dict[str, dict[str, str]]:
    with open(tmp / "results" / f"{name}.csv") as fh:
        return {row["model"]: row for row in csv.DictReader(fh)}


def hashes(tmp: Path, name: str) -> dict[str, str]:
    """Each cell's settings hash by ``<method>_seed<seed>``, checked against its ``cell.json``."""
    found = {}
    for cell in sorted((tmp / "runs" / name).glob("synthetic_*")):
        match = re.fullmatch(r"synthetic_(\w+_seed\d+)_([0-9a-f]{12})", cell.name)
        assert match is not None, cell.name
        assert json.loads((cell / "cell.json").read_text())["hash"] == match[2]
        assert (cell / "metrics.json").is_file()
        found[match[1]] = match[2]
    return found


def test_parallel_cells_equal_sequential_and_reruns_skip(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run(tmp_path, "parallel", "--workers", "2")
    out = capfd.readouterr().out
    assert out.count("[benchmark] cell ") == 4 and "cell 4/4" in out and "ETA" in out
    for suffix in ("md", "csv", "tex"):
        assert (tmp_path / "results" / f"parallel.{suffix}").is_file()
    parallel = table(tmp_path, "parallel")
    assert set(parallel) == {"eszsl", "sae"} and parallel["eszsl"]["seeds"] == "2"

    run(tmp_path, "sequential")  # another name: its own runs, in this process
    sequential = table(tmp_path, "sequential")
    # the same settings in worker processes and here: the same hashes (output_dir not counted)
    assert hashes(tmp_path, "parallel") == hashes(tmp_path, "sequential")
    assert len(set(hashes(tmp_path, "parallel").values())) == 4
    for model in ("eszsl", "sae"):
        for key in ("zsl_t1", "gzsl_h", "gzsl_h_cal"):
            assert float(parallel[model][key]) == pytest.approx(float(sequential[model][key]))

    capfd.readouterr()
    run(tmp_path, "parallel", "--workers", "2")  # everything is finished: nothing reruns
    out = capfd.readouterr().out
    assert out.count("[benchmark] reusing ") == 4 and "data=synthetic" not in out
    assert table(tmp_path, "parallel") == parallel
