"""The benchmark's summary figure, synthetic-feature rows in its tables and its W&B record
(offline), from hand-made ``metrics.json`` dicts (no training)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from zsl.cli.benchmark import aggregate, log_benchmark, write_tables
from zsl.reporting.benchmark import log_to_wandb, summary_figure, table_columns

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def metrics(dataset: str, model: str, seed: int, synthetic: bool) -> dict[str, Any]:
    """A run's ``metrics.json`` as ``zsl.cli.train`` writes it (the keys aggregate reads)."""
    u, s = 30.0 + seed + (5.0 if model == "ale" else 0.0), 60.0 - seed
    out: dict[str, Any] = {
        "dataset": dataset,
        "model": model,
        "zsl_t1": 50.0 + seed,
        "gzsl_u": u,
        "gzsl_s": s,
        "gzsl_h": 2 * u * s / (u + s),
        "gzsl_h_cal": 45.0 + seed,
        "wall_time_s": 10.0 + seed,
        "selected_params": {"lr": 0.01},
        "selected_epochs": 3,
    }
    if synthetic:
        out["synthetic_features"] = True
    elif dataset == "CUB" and seed == 1:
        out["synthetic_features"] = False  # explicit false reads like an absent key
    return out


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    results = [
        metrics(dataset, model, seed, synthetic=dataset == "SUN")
        for dataset in ("CUB", "SUN")
        for model in ("ale", "eszsl")
        for seed in (0, 1)
    ]
    return aggregate(results)


def test_aggregate_carries_the_synthetic_flag(rows: list[dict[str, Any]]) -> None:
    assert [(r["dataset"], r["model"], r["seeds"]) for r in rows] == [
        ("CUB", "ale", 2),
        ("CUB", "eszsl", 2),
        ("SUN", "ale", 2),
        ("SUN", "eszsl", 2),
    ]
    assert {r["dataset"]: r["synthetic"] for r in rows} == {"CUB": False, "SUN": True}
    assert all(isinstance(r["synthetic"], bool) for r in rows)


def test_summary_figure_is_a_png(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = summary_figure(rows, tmp_path / "deep" / "summary.png")
    assert path == tmp_path / "deep" / "summary.png"
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 20_000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert width > height > 300  # two panels side by side
    with pytest.raises(ValueError, match="at least one"):
        summary_figure([], tmp_path / "empty.png")


def test_tables_mark_synthetic_rows_only(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    args = argparse.Namespace(name="bench", results_dir=str(tmp_path), logger="csv")
    figure = write_tables(rows, args, total_s=60.0)
    assert figure == tmp_path / "bench.png" and figure.read_bytes()[:8] == PNG_MAGIC

    md = (tmp_path / "bench.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert sum("| SUN (synthetic features) |" in line for line in table) == 2
    assert sum("| CUB |" in line for line in table) == 2
    assert "CUB (synthetic" not in md
    assert "generated at the dataset's real shapes" in md.replace("\n", " ")
    assert "timing/pipeline rows, not accuracy results" in md
    assert "![GZSL H per method and GZSL u vs s](bench.png)" in md

    with open(tmp_path / "bench.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert "synthetic" in csv_rows[0]
    assert {(r["dataset"], r["synthetic"]) for r in csv_rows} == {
        ("CUB", "False"),
        ("SUN", "True"),
    }

    tex = (tmp_path / "bench.tex").read_text()
    assert tex.count("SUN (synthetic features) & ") == 2
    assert tex.count("\nCUB & ") == 2 and "CUB (synthetic" not in tex


def test_tables_without_synthetic_rows_say_nothing_about_them(tmp_path: Path) -> None:
    rows = aggregate([metrics("CUB", "ale", seed, synthetic=False) for seed in (0, 1)])
    args = argparse.Namespace(name="real", results_dir=str(tmp_path), logger="csv")
    write_tables(rows, args, total_s=1.0)
    for suffix in ("md", "tex"):
        assert "synthetic" not in (tmp_path / f"real.{suffix}").read_text()
    assert not (tmp_path / "wandb").exists()  # the CSV logger logs nothing to W&B


def test_log_to_wandb_writes_an_offline_run_with_the_table(
    rows: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "wandb_home"
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_ARTIFACT_DIR": str(home / "artifacts"),
    }.items():
        monkeypatch.setenv(key, value)
    results = tmp_path / "results"
    figure = summary_figure(rows, results / "bench.png")
    log_to_wandb(rows, figure, "bench", results)

    runs = sorted((results / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((results / "wandb").iterdir())
    assert len(list(runs[0].glob("run-*.wandb"))) == 1  # the transaction log wandb sync reads
    media = runs[0] / "files" / "media"
    (table_file,) = (media / "table" / "benchmark").glob("table_*.table.json")
    table = json.loads(table_file.read_text())
    columns = table_columns()
    assert table["columns"] == columns and len(columns) == 16
    assert len(table["data"]) == len(rows) == 4
    assert all(len(row) == len(columns) for row in table["data"])
    by_cell = {(r[0], r[1]): dict(zip(columns, r, strict=True)) for r in table["data"]}
    assert by_cell["SUN", "ale"]["synthetic"] is True
    assert by_cell["CUB", "eszsl"]["synthetic"] is False
    assert by_cell["CUB", "ale"]["seeds"] == 2
    assert by_cell["CUB", "ale"]["zsl_t1"] == pytest.approx(50.5)
    assert by_cell["CUB", "ale"]["time_per_run_s"] == pytest.approx(10.5)
    (image,) = (media / "images" / "benchmark").glob("summary_*.png")
    assert image.read_bytes()[:8] == PNG_MAGIC


def test_a_wandb_failure_only_warns(
    rows: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("no network")

    monkeypatch.setattr("zsl.cli.benchmark.log_to_wandb", broken)
    args = argparse.Namespace(name="bench", results_dir=str(tmp_path), logger="wandb")
    with pytest.warns(UserWarning, match="W&B could not log the benchmark.*no network"):
        log_benchmark(rows, tmp_path / "bench.png", args)
