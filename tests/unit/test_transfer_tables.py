"""The transfer suite's checks and report (``zsl.reporting.transfer_tables``)."""

from __future__ import annotations

from typing import Any

import pytest

from zsl.reporting.transfer_tables import checks, render


def cell(t1: float, u: float, s: float, h: float, h_cal: float, **extra: Any) -> dict[str, Any]:
    return {
        "status": "ran",
        "zsl_t1": t1,
        "gzsl_u": u,
        "gzsl_s": s,
        "gzsl_h": h,
        "gzsl_h_cal": h_cal,
        "wall_time_s": 10.0,
        **extra,
    }


CELLS = {
    "CUB_PCA64": {
        "gfzsl": cell(54.3, 20.0, 50.0, 28.6, 44.3),
        "dap": cell(30.0, 1.0, 60.0, 2.0, 30.0),  # below 2/3 of 54.3
        "tfvaegan": cell(52.7, 40.0, 45.0, 42.4, 42.3),  # within 2 points of 44.3
        "clswgan": cell(19.9, 0.0, 50.0, 0.0, 22.9),  # collapsed and far below
    }
}


def test_checks_apply_the_suites_bars() -> None:
    found = checks(CELLS)["CUB_PCA64"]
    assert found["best_classical_h_cal"] == ("gfzsl", 44.3)
    assert found["t1_floor"] == pytest.approx(54.3 * 2 / 3)
    assert set(found["t1_below_floor"]) == {"dap", "clswgan"}
    tf, cl = found["generative"]["tfvaegan"], found["generative"]["clswgan"]
    assert tf == {"u_positive": True, "s_positive": True, "h_cal_ok": True, "t1_ok": True}
    assert cl == {"u_positive": False, "s_positive": True, "h_cal_ok": False, "t1_ok": False}


def test_a_missing_number_is_not_a_pass() -> None:
    cells = {"CUB_FEW10": {"ale": cell(40.0, 10, 50, 16.7, 38.0), "cadavae": {"status": "error"}}}
    found = checks(cells)["CUB_FEW10"]["generative"]["cadavae"]
    assert set(found.values()) == {None}


def test_render_writes_every_cell_and_flags_a_failed_check() -> None:
    report = {
        "variants": {
            "CUB_PCA64": {
                "description": "PCA 64",
                "feature_file": "pca64.mat",
                "cached": True,
                "build_s": 0.0,
            }
        },
        "models": list(CELLS["CUB_PCA64"]),
        "cells": CELLS,
        "command": "python experiments/transfer_suite.py",
        "machine": "test",
        "threads": "OMP_NUM_THREADS=1",
        "seed": 0,
        "set": [],
        "done": 4,
        "elapsed_s": 40.0,
        "updated": "now",
        "checks": checks(CELLS),
    }
    text = render(report)
    assert "| clswgan | 19.9 | 0.0 | 50.0 | 0.0 | 22.9 | 10 |" in text
    assert "**NO**" in text
