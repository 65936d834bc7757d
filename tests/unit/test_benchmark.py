"""The benchmark runner's method sets and aggregation (no training)."""

from __future__ import annotations

import pytest

from zsl.cli.benchmark import GBU, aggregate, expand_methods
from zsl.models import MODELS


def test_the_gbu_set_is_the_thirteen_registered_methods() -> None:
    names = expand_methods("gbu")
    assert names == list(GBU) and len(names) == 13 and len(set(names)) == 13
    assert all(name in MODELS for name in names)
    classical = expand_methods("classical")
    assert set(GBU) < set(classical) and "cmt_novelty" in classical
    assert "clswgan" in expand_methods("generative") and "clswgan" not in classical
    # sets and names mix; repeats are dropped, order kept
    assert expand_methods("ale,gbu,ale")[:2] == ["ale", "dap"]


def test_an_unknown_method_is_one_line() -> None:
    with pytest.raises(SystemExit, match=r"^error: unknown method 'alee'; available: .*gbu"):
        expand_methods("gbu,alee")


def test_aggregate_is_mean_and_sample_std_over_seeds() -> None:
    def run(t1: float) -> dict[str, object]:
        metrics = {k: t1 for k in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_h_cal")}
        return {
            **metrics,
            "wall_time_s": 10.0,
            "dataset": "CUB",
            "model": "ale",
            "selected_params": {"lr": 0.01},
            "selected_epochs": 3,
        }

    (row,) = aggregate([run(50.0), run(52.0), run(54.0)])
    assert row["seeds"] == 3 and row["zsl_t1"] == pytest.approx(52.0)
    assert row["zsl_t1_std"] == pytest.approx(2.0) and row["zsl_t1_fmt"] == "52.0 ± 2.0"


def test_latex_table_escapes_and_formats() -> None:
    from zsl.cli.benchmark import latex_table

    row = {"dataset": "CUB", "model": "cmt_novelty"}
    for key in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_h_cal", "wall_time_s"):
        row[f"{key}_fmt"] = "52.0 ± 2.0"
    tex = latex_table([row])
    assert tex.startswith("\\begin{tabular}{llrrrrrr}\n\\toprule\n")
    assert "CUB & cmt\\_novelty & 52.0 $\\pm$ 2.0 &" in tex
    assert tex.rstrip().endswith("\\bottomrule\n\\end{tabular}")
    assert tex.count("\\\\\n") == 2  # header and one row end with a LaTeX line break


def test_cores_are_those_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """``taskset -c 0,2 zsl-benchmark`` (or a container's CPU set) on a 16-core machine: 2."""
    import os

    from zsl.cli import benchmark

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2}, raising=False)
    assert benchmark._cpus() == 2
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS, Windows: no affinity to ask
    assert benchmark._cpus() == 16
