"""``experiments/gpu_table.py`` with ``--trainer cpu --smoke``: the whole pipeline of the GPU
table (every listed method on split-only benchmarks, synthetic features at their real shapes,
time per method) on the CPU, on two of the real split files."""

from __future__ import annotations

import csv
from pathlib import Path

from conftest import load_experiment


def test_gpu_table_runs_on_the_cpu_with_a_tiny_setting(shared_data: Path, tmp_path: Path) -> None:
    script = load_experiment("gpu_table")
    args = [
        *("--trainer", "cpu", "--smoke", "--root", str(shared_data / "xlsa17")),
        *("--feature-file", "vgg_fc7.mat", "--datasets", "apy,flo"),
        *("--methods", "ale,eszsl,cadavae,clswgan"),
        *("--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")),
    ]
    seconds = script.main(args)
    assert set(seconds) == {"ale", "eszsl", "cadavae", "clswgan", "total"}
    assert all(value > 0 for value in seconds.values())
    with open(tmp_path / "results" / "gpu_table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["dataset"], r["model"]) for r in rows} == {
        (d, m) for d in ("APY", "FLO") for m in ("ale", "eszsl", "cadavae", "clswgan")
    }
    assert all(r["synthetic"] == "True" for r in rows)  # no features of these ship here
    table = (tmp_path / "results" / "gpu_table.md").read_text()
    assert (
        "APY (synthetic features)" in table and (tmp_path / "results" / "gpu_table.png").is_file()
    )
    again = script.main(args)  # every cell is reused
    assert again["total"] < seconds["total"]
