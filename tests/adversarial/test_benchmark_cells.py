"""``zsl-benchmark`` cells are keyed by their settings: a finished cell is reused only when its
recorded settings hash equals the new one; a cell made with other settings, or without a
record (an older benchmark), is rerun into a fresh directory and left in place, with one line
saying why. Tiny built-in synthetic data and the closed-form ESZSL without a grid: each
training is about a second."""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL_SYNTHETIC

from zsl.cli import benchmark
from zsl.cli.benchmark import (
    CELL_RECORD,
    cell_argv,
    cell_settings,
    earlier_cells,
    main,
    settings_hash,
)

SMALL = [
    *SMALL_SYNTHETIC,
    "selection.grid=false",  # one fit of model.params: what the overrides below change
]
LOW, HIGH = "model.params.semantic_reg=0.01", "model.params.semantic_reg=100.0"
HASHED = re.compile(r"synthetic_eszsl_seed0_[0-9a-f]{12}")


def bench(tmp: Path, *extra: str, flags: tuple[str, ...] = ()) -> None:
    """One benchmark ``b`` of one cell (synthetic, eszsl, seed 0) under ``tmp``."""
    main(
        ["--name", "b", "--methods", "eszsl", "--seeds", "0", "--datasets", "synthetic"]
        + ["--runs-dir", str(tmp / "runs"), "--results-dir", str(tmp / "results"), *flags]
        + ["--", f"data.root={tmp / 'data'}", *SMALL, *extra]
    )


def table_t1(tmp: Path) -> float:
    with open(tmp / "results" / "b.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    return float(row["zsl_t1"])


def cells(tmp: Path) -> list[Path]:
    """The benchmark's cell directories (all settings, any format)."""
    return sorted(d for d in (tmp / "runs" / "b").iterdir() if d.name.startswith("synthetic_"))


def metrics(cell: Path) -> dict[str, Any]:
    return dict(json.loads((cell / "metrics.json").read_text()))


def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any training from here on fails the test."""

    def refuse(argv: list[str]) -> None:
        raise AssertionError(f"trained although the cell is finished: {argv}")

    monkeypatch.setattr(benchmark, "train_main", refuse)


def rerun_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[benchmark] rerunning ")]


def test_a_rerun_with_the_same_settings_reuses_the_cell(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bench(tmp_path, LOW)
    (cell,) = cells(tmp_path)
    assert HASHED.fullmatch(cell.name), cell.name
    record = json.loads((cell / CELL_RECORD).read_text())
    # the hash is the one of the cell's composed config, recorded beside its metrics
    args = argparse.Namespace(logger="csv", root=None, feature_file=None)
    extra = [f"data.root={tmp_path / 'data'}", *SMALL, LOW]
    expected = settings_hash(cell_settings(cell_argv("eszsl", "synthetic", 0, args, extra)))
    assert record["hash"] == expected == cell.name.rsplit("_", 1)[1]
    assert f"output_dir={cell}" in record["argv"] and LOW in record["argv"]
    assert record["settings"]["model"]["params"]["semantic_reg"] == 0.01
    before = (cell / "metrics.json").read_bytes(), (cell / "metrics.json").stat().st_mtime_ns
    t1 = table_t1(tmp_path)

    no_training(monkeypatch)
    capfd.readouterr()
    bench(tmp_path, LOW)
    # keys that cannot change the numbers, and the order of the overrides, do not count
    bench(tmp_path, "trainer.log_every_n_steps=3", LOW, "trainer.checkpoint_interval_s=5")
    out = capfd.readouterr().out
    assert out.count(f"[benchmark] reusing {cell}") == 2 and not rerun_lines(out)
    assert cells(tmp_path) == [cell]
    assert ((cell / "metrics.json").read_bytes(), (cell / "metrics.json").stat().st_mtime_ns) == (
        before
    )
    assert table_t1(tmp_path) == pytest.approx(t1)


def test_a_changed_override_reruns_the_cell_into_a_fresh_directory(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bench(tmp_path, LOW)
    (old,) = cells(tmp_path)
    old_metrics = metrics(old)
    assert table_t1(tmp_path) == pytest.approx(old_metrics["zsl_t1"])

    capfd.readouterr()
    bench(tmp_path, HIGH)
    out = capfd.readouterr().out
    assert table_t1(tmp_path) != pytest.approx(old_metrics["zsl_t1"])  # not the old numbers
    new = next(c for c in cells(tmp_path) if c != old)
    assert rerun_lines(out) == [
        f"[benchmark] rerunning synthetic eszsl seed 0: settings changed since {old} "
        f"(model.params.semantic_reg); new cell {new}"
    ]
    assert "[benchmark] reusing" not in out
    # the table shows the new cell's numbers, which differ from the old ones
    new_metrics = metrics(new)
    assert new_metrics["selected_params"]["semantic_reg"] == 100.0
    assert table_t1(tmp_path) == pytest.approx(new_metrics["zsl_t1"])
    assert new_metrics["zsl_t1"] != pytest.approx(old_metrics["zsl_t1"])
    # the old cell is untouched, and going back to its settings reuses it
    assert metrics(old) == old_metrics
    assert json.loads((old / CELL_RECORD).read_text())["hash"] == old.name.rsplit("_", 1)[1]
    no_training(monkeypatch)
    bench(tmp_path, LOW)
    assert f"[benchmark] reusing {old}" in capfd.readouterr().out
    assert table_t1(tmp_path) == pytest.approx(old_metrics["zsl_t1"])


@pytest.mark.parametrize("layout", ["pre-hash directory", "record removed", "record tampered"])
def test_a_cell_without_a_matching_settings_record_is_rerun(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], layout: str
) -> None:
    bench(tmp_path, LOW)
    (cell,) = cells(tmp_path)
    real = metrics(cell)
    fake = {**real, "zsl_t1": 99.5}  # numbers no run of these settings gives
    (cell / "metrics.json").write_text(json.dumps(fake))
    if layout == "pre-hash directory":  # what the benchmark wrote before cells had a record
        (cell / CELL_RECORD).unlink(missing_ok=True)
        stale = cell.rename(cell.with_name("synthetic_eszsl_seed0"))
    elif layout == "record removed":
        (cell / CELL_RECORD).unlink()
        stale = cell
    else:
        record = json.loads((cell / CELL_RECORD).read_text())
        (cell / CELL_RECORD).write_text(json.dumps({**record, "hash": "0" * 12}))
        stale = cell

    capfd.readouterr()
    bench(tmp_path, LOW)
    out = capfd.readouterr().out
    (line,) = rerun_lines(out)
    assert line.startswith(f"[benchmark] rerunning synthetic eszsl seed 0: {stale}")
    assert line.endswith(f"; new cell {cell}")
    if layout == "record tampered":
        assert f"{CELL_RECORD} records hash 000000000000, not {cell.name[-12:]}" in line
    else:
        assert f"has no settings record ({CELL_RECORD})" in line
    assert "[benchmark] reusing" not in out
    assert table_t1(tmp_path) == pytest.approx(real["zsl_t1"]) != 99.5
    assert metrics(cell)["zsl_t1"] == pytest.approx(real["zsl_t1"])
    assert (cell / CELL_RECORD).is_file()
    if layout == "pre-hash directory":  # left where it was
        assert metrics(stale) == fake and cells(tmp_path) == sorted([cell, stale])


def test_force_reruns_a_matching_cell_and_says_so(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    bench(tmp_path, LOW)
    (cell,) = cells(tmp_path)
    capfd.readouterr()
    bench(tmp_path, LOW, flags=("--force",))
    (line,) = rerun_lines(capfd.readouterr().out)
    assert line == (
        f"[benchmark] rerunning synthetic eszsl seed 0: --force (same settings as {cell}); "
        f"new cell {cell}"
    )
    assert cells(tmp_path) == [cell] and (cell / CELL_RECORD).is_file()


def test_the_settings_hash_ignores_only_keys_that_cannot_change_results() -> None:
    args = argparse.Namespace(logger="csv", root=None, feature_file=None)

    def digest(*extra: str, **kwargs: Any) -> str:
        run_args = argparse.Namespace(**{**vars(args), **kwargs})
        return settings_hash(cell_settings(cell_argv("eszsl", "synthetic", 0, run_args, [*extra])))

    base = digest()
    assert re.fullmatch(r"[0-9a-f]{12}", base)
    assert digest("output_dir=/elsewhere", "paths.runs_dir=/x") == base
    assert digest(logger="wandb") == base
    assert digest("trainer.enable_progress_bar=true", "trainer.log_every_n_steps=1") == base
    changed = {
        digest(LOW),
        digest("seed=1"),  # a later seed= wins, as in train.py
        digest(root="/data/xlsa17"),
        digest(feature_file="vgg_fc7.mat"),
        digest("data.preprocess=none"),
        digest("trainer.max_epochs=3"),
        digest("model=sae"),
    }
    assert base not in changed and len(changed) == 7
    # sorted-key JSON: the order of the settings does not matter
    settings = cell_settings(cell_argv("eszsl", "synthetic", 0, args, []))
    assert settings_hash(dict(reversed(list(settings.items())))) == base


def test_a_bad_override_is_the_config_error_of_train_py() -> None:
    args = argparse.Namespace(logger="csv", root=None, feature_file=None)
    with pytest.raises(SystemExit, match=r"^config error: unknown config key 'model.params.nope'"):
        cell_settings(cell_argv("eszsl", "synthetic", 0, args, ["model.params.nope=1"]))


def test_standin_features_enter_the_settings_by_their_provenance(tmp_path: Path) -> None:
    """Stand-in features keep their path when ``--synthetic-dim`` changes: their provenance
    record (written beside them) is part of the cell's settings."""
    from zsl.data.standin import FEATURE_FILE, provenance_path

    root = tmp_path / "standins"
    standin = (str(root), FEATURE_FILE)
    args = argparse.Namespace(logger="csv", root=None, feature_file=None)
    args.standins = {"synthetic": standin}
    argv = cell_argv("eszsl", "synthetic", 0, args, [])
    assert f"data.root={root}" in argv and f"data.feature_file={FEATURE_FILE}" in argv
    record = provenance_path(root / "SYNTHETIC" / FEATURE_FILE)
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"synthetic": True, "feature_dim": 32}))
    small = cell_settings(argv, standin)
    assert small["benchmark"]["synthetic_features"]["feature_dim"] == 32
    record.write_text(json.dumps({"synthetic": True, "feature_dim": 2048}))
    assert settings_hash(cell_settings(argv, standin)) != settings_hash(small)


def test_earlier_cells_match_their_own_dataset_method_and_seed_only(tmp_path: Path) -> None:
    names = [
        "synthetic_eszsl_seed1",
        "synthetic_eszsl_seed1_0123456789ab",
        "synthetic_eszsl_seed10_0123456789ab",  # another seed
        "synthetic_cmt_novelty_seed1_0123456789ab",  # another method
        "synthetic_eszsl_seed1_notahash1234",
        "synthetic_eszsl_seed1_fedcba987654",  # no metrics.json: not a finished cell
    ]
    for name in names:
        (tmp_path / name).mkdir()
        if name != names[-1]:
            (tmp_path / name / "metrics.json").write_text("{}")
    found = {d.name for d in earlier_cells(tmp_path, "synthetic_eszsl_seed1")}
    assert found == {"synthetic_eszsl_seed1", "synthetic_eszsl_seed1_0123456789ab"}
    assert {d.name for d in earlier_cells(tmp_path, "synthetic_cmt_seed1")} == set()
    assert earlier_cells(tmp_path / "missing", "synthetic_eszsl_seed1") == []
