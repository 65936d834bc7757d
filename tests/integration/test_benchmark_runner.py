"""``zsl-benchmark`` end to end on a small synthetic benchmark: cells in two worker processes
give the numbers of a sequential run, progress is reported per cell, the tables are written
(Markdown, CSV, LaTeX) and a rerun skips every finished cell."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from zsl.cli.benchmark import main

pytestmark = pytest.mark.slow

SMALL = [
    "data.synthetic.n_classes=12",
    "data.synthetic.n_unseen=3",
    "data.synthetic.n_val=3",
    "data.synthetic.feature_dim=32",
    "data.synthetic.n_attributes=16",
    "data.synthetic.min_per_class=20",
    "data.synthetic.max_per_class=30",
]


def run(tmp: Path, name: str, *flags: str) -> None:
    main(
        ["--name", name, "--methods", "eszsl,sae", "--seeds", "0,1", "--datasets", "synthetic"]
        + ["--runs-dir", str(tmp / "runs"), "--results-dir", str(tmp / "results"), *flags]
        + ["--", f"paths.data_dir={tmp / 'data'}", *SMALL]
    )


def table(tmp: Path, name: str) -> dict[str, dict[str, str]]:
    with open(tmp / "results" / f"{name}.csv") as fh:
        return {row["model"]: row for row in csv.DictReader(fh)}


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
    for model in ("eszsl", "sae"):
        for key in ("zsl_t1", "gzsl_h", "gzsl_h_cal"):
            assert float(parallel[model][key]) == pytest.approx(float(sequential[model][key]))

    capfd.readouterr()
    run(tmp_path, "parallel", "--workers", "2")  # everything is finished: nothing reruns
    out = capfd.readouterr().out
    assert out.count("[benchmark] reusing ") == 4 and "data=synthetic" not in out
    assert table(tmp_path, "parallel") == parallel
