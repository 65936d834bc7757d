"""``python -m zsl -m model=eszsl seed=0,1``: the multirun ends with ``summary.md`` and
``summary.csv`` in its sweep folder (:mod:`zsl.reporting.multirun`, a Hydra callback), the mean
and sample std over the two seeds of the jobs' own ``metrics.json``, also printed."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SMALL_SYNTHETIC

pytestmark = pytest.mark.slow

KEYS = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_h_cal")


def test_multirun_over_seeds_writes_mean_and_sample_std(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = [
        "-m",
        "model=eszsl",
        "seed=0,1",
        "logger=csv",
        f"data.root={tmp_path / 'data'}",
        f"paths.runs_dir={runs}",
        "trainer.enable_progress_bar=false",
        *SMALL_SYNTHETIC,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-m", "zsl", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = runs.glob("multirun_*")
    found = sorted(sweep.glob("*/metrics.json"))
    assert [p.parent.name for p in found] == ["0_SYNTHETIC_eszsl_seed0", "1_SYNTHETIC_eszsl_seed1"]
    metrics = [json.loads(p.read_text()) for p in found]

    with open(sweep / "summary.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["status"], row["dataset"], row["model"]) == ("finished", "SYNTHETIC", "eszsl")
    assert row["n"] == "2" and row["seeds"] == "0;1"
    for key in KEYS:
        values = [float(m[key]) for m in metrics]
        assert float(row[f"{key}_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-9)
        assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-9)

    text = (sweep / "summary.md").read_text()
    assert "2 job(s), 2 finished. Mean ± sample std (n - 1) over seeds" in text
    assert "| dataset | model | ZSL T1 | u | s | H | H cal | n |" in text
    t1 = [float(m["zsl_t1"]) for m in metrics]
    cell = f"{statistics.fmean(t1):.2f} ± {statistics.stdev(t1):.2f}"
    assert f"| SYNTHETIC | eszsl | {cell} |" in text and text.rstrip().endswith("| 2 |")
    assert "Failed" not in text
    assert text in done.stdout and f"written: {sweep}/summary.md and .csv" in done.stdout
