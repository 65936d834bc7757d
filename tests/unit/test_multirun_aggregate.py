"""The multirun summary's aggregation (:mod:`zsl.reporting.multirun`), without running jobs:
mean ± sample std over seeds, single runs without ±, failed and not-run jobs listed, swept
settings as columns, the Optuna line, and the callback's records on a fake sweep folder."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from zsl.reporting.multirun import (
    BASIC_SWEEPER,
    Job,
    MultirunSummary,
    aggregate,
    collect_jobs,
    expected_jobs,
    optuna_best,
    to_csv,
    to_markdown,
    varying_keys,
    write_record,
)

KEYS = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_h_cal")


def metrics(seed: int, base: float, model: str = "eszsl", dataset: str = "CUB") -> dict[str, Any]:
    """A metrics.json of one run: every reported metric ``base + i + seed``."""
    values = {key: base + i + 1.5 * seed for i, key in enumerate(KEYS)}
    return {**values, "seed": seed, "model": model, "dataset": dataset, "protocol": "test"}


def job(seed: int, base: float = 50.0, *extra: str, model: str = "eszsl") -> Job:
    return Job(
        name=f"{seed}_CUB_{model}_seed{seed}",
        overrides=(f"model={model}", f"seed={seed}", *extra),
        metrics=metrics(seed, base, model),
    )


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_two_seeds_give_mean_and_sample_std() -> None:
    jobs = [job(0, 50.0), job(1, 50.0)]
    summary = aggregate(jobs)
    assert summary.settings == ()  # the seed is averaged over, never a column
    (row,) = summary.rows
    assert (row.dataset, row.model, row.n, row.seeds) == ("CUB", "eszsl", 2, (0, 1))
    for key in KEYS:
        values = [float(j.metrics[key]) for j in jobs]  # type: ignore[index]
        assert row.mean[key] == pytest.approx(statistics.fmean(values))
        assert row.std[key] == pytest.approx(statistics.stdev(values))  # n - 1
    assert row.std["zsl_t1"] == pytest.approx(1.5 / math.sqrt(2))
    text = to_markdown(summary)
    assert "Mean ± sample std (n - 1) over seeds" in text
    assert "| dataset | model | ZSL T1 | u | s | H | H cal | n |" in text
    assert "| CUB | eszsl | 50.75 ± 1.06 | 51.75 ± 1.06 |" in text
    assert text.rstrip().endswith("| 2 |")
    (line,) = rows_of(to_csv(summary))
    assert line["status"] == "finished" and line["n"] == "2" and line["seeds"] == "0;1"
    assert float(line["zsl_t1_mean"]) == pytest.approx(50.75)
    assert float(line["gzsl_h_cal_std"]) == pytest.approx(1.5 / math.sqrt(2))


def test_one_seed_shows_no_std_and_claims_no_seeds() -> None:
    summary = aggregate([job(0, 40.0)])
    (row,) = summary.rows
    assert row.n == 1 and all(row.std[key] is None for key in KEYS)
    text = to_markdown(summary)
    assert "±" not in text and "over seeds" not in text
    assert "One run per row (single runs, no std)" in text
    assert "| CUB | eszsl | 40.00 | 41.00 | 42.00 | 43.00 | 44.00 | 1 |" in text
    (line,) = rows_of(to_csv(summary))
    assert line["zsl_t1_std"] == "" and float(line["zsl_t1_mean"]) == 40.0


def test_failed_and_not_run_jobs_are_listed_not_dropped() -> None:
    failed = Job("1_CUB_eszsl_seed1", ("model=eszsl", "seed=1"), None, "failed", 1)
    later = Job("job 2", ("model=eszsl", "seed=2"), None, "not run", 2)
    summary = aggregate([job(0), failed, later])
    assert summary.rows[0].n == 1 and summary.failed == [failed] and summary.not_run == [later]
    text = to_markdown(summary)
    assert "3 job(s), 1 finished, 1 failed, 1 not run." in text
    assert "Failed (no metrics.json): 1 of 3 jobs" in text
    assert "- 1_CUB_eszsl_seed1 (seed=1)" in text  # its swept overrides
    assert "Not run (the multirun stopped first): 1 jobs" in text and "- job 2 (seed=2)" in text
    lines = rows_of(to_csv(summary))
    assert [line["status"] for line in lines] == ["finished", "failed", "not run"]
    assert lines[1]["job"] == "1_CUB_eszsl_seed1" and lines[1]["overrides"] == "model=eszsl seed=1"
    assert lines[1]["n"] == "0" and lines[1]["zsl_t1_mean"] == ""


def test_swept_settings_are_rows_and_model_options_are_not_columns() -> None:
    jobs = [
        job(seed, 50.0 + 10 * i, f"model.params.lr={lr}", model=model)
        for i, (model, lr) in enumerate([("ale", "0.1"), ("ale", "0.01"), ("sje", "0.1")])
        for seed in (0, 1)
    ]
    assert varying_keys(jobs) == ["model", "seed", "model.params.lr"]
    summary = aggregate(jobs)
    assert summary.settings == ("model.params.lr",)
    assert [(r.model, r.settings, r.n) for r in summary.rows] == [
        ("ale", ("0.1",), 2),
        ("ale", ("0.01",), 2),
        ("sje", ("0.1",), 2),
    ]
    assert "| dataset | model | model.params.lr | ZSL T1 |" in to_markdown(summary)
    # two options of one model name (cadavae, cadavae_paper): the option is a column
    twins = [job(0, 50.0, model="cadavae"), job(0, 60.0, model="cadavae")]
    twins[1] = Job(twins[1].name, ("model=cadavae_paper", "seed=0"), twins[1].metrics)
    assert aggregate(twins).settings == ("model",)
    assert "| dataset | model | model (override) |" in to_markdown(aggregate(twins))


def test_a_metric_missing_or_nan_shows_as_not_available() -> None:
    a, b = job(0), job(1)
    assert a.metrics is not None
    a = Job(a.name, a.overrides, {**a.metrics, "gzsl_h_cal": float("nan")})
    row = aggregate([a, b]).rows[0]
    assert math.isnan(row.mean["gzsl_h_cal"]) and not math.isnan(row.mean["gzsl_h"])
    assert "| n/a | 2 |" in to_markdown(aggregate([a, b]))


def test_optuna_best_line() -> None:
    results = {"name": "optuna", "best_params": {"model.params.lr": 0.0123}, "best_value": 53.219}
    assert optuna_best(results, "validation zsl_t1") == (
        "optuna best value (validation zsl_t1): 53.22 at model.params.lr=0.0123"
    )


def test_expected_jobs_follow_the_basic_sweepers_order() -> None:
    assert expected_jobs(["model=ale,eszsl", "seed=0,1", "logger=csv"]) == [
        ["model=ale", "seed=0", "logger=csv"],
        ["model=ale", "seed=1", "logger=csv"],
        ["model=eszsl", "seed=0", "logger=csv"],
        ["model=eszsl", "seed=1", "logger=csv"],
    ]


def _hydra_config(sweep: Path, num: int = 0, task: list[str] | None = None) -> Any:
    return OmegaConf.create(
        {
            "hydra": {
                "mode": "MULTIRUN",
                "sweep": {"dir": str(sweep)},
                "sweeper": {"_target_": BASIC_SWEEPER, "params": None},
                "job": {"num": num},
                "runtime": {"output_dir": str(sweep / f"{num}_CUB_eszsl")},
                "overrides": {"task": task or []},
            }
        }
    )


def test_callback_records_jobs_and_writes_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Job 0 finishes, job 1 starts but writes no metrics.json, job 2 never starts: the end of
    the multirun writes summary.md/.csv naming each."""
    sweep = tmp_path / "multirun"
    callback = MultirunSummary()
    callback.on_multirun_start(_hydra_config(sweep, task=["model=eszsl", "seed=0,1,2"]))
    for num in (0, 1):
        callback.on_job_start(_hydra_config(sweep, num, ["model=eszsl", f"seed={num}"]))
        (sweep / f"{num}_CUB_eszsl").mkdir(parents=True)
    (sweep / "0_CUB_eszsl" / "metrics.json").write_text(json.dumps(metrics(0, 50.0)))
    callback.on_multirun_end(_hydra_config(sweep))
    out = capsys.readouterr().out
    text = (sweep / "summary.md").read_text()
    assert text in out and f"written: {sweep}/summary.md and .csv" in out
    assert "3 job(s), 1 finished, 1 failed, 1 not run." in text
    assert "- 1_CUB_eszsl (seed=1)" in text and "- job 2 (seed=2)" in text
    statuses = [line["status"] for line in rows_of((sweep / "summary.csv").read_text())]
    assert statuses == ["finished", "failed", "not run"]
    callback._at_exit()  # already summarised: nothing more
    assert capsys.readouterr().out == ""


def test_collect_jobs_reads_records_and_unrecorded_folders(tmp_path: Path) -> None:
    write_record(tmp_path, 0, ["seed=0"], tmp_path / "0_a")
    (tmp_path / "0_a").mkdir()
    (tmp_path / "0_a" / "metrics.json").write_text(json.dumps(metrics(0, 50.0)))
    (tmp_path / "old").mkdir()  # a run folder without a record
    (tmp_path / "old" / "metrics.json").write_text(json.dumps(metrics(1, 50.0)))
    (tmp_path / "notes").mkdir()  # not a run folder
    jobs = collect_jobs(tmp_path, expected=[["seed=0"], ["seed=1"]])
    assert [(j.name, j.status) for j in jobs] == [
        ("0_a", "finished"),
        ("old", "finished"),
        ("job 1", "not run"),
    ]
