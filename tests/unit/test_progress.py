"""The grid's progress lines (:class:`zsl.run.progress.GridProgress`): an ETA while points
are still to be fitted, none once every point has been fitted."""

from __future__ import annotations

import re

import pytest

from zsl.run.progress import GridProgress


def finished_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "· val zsl_t1" in line]


def test_one_point_after_another_has_an_eta_until_the_last(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = GridProgress(3, ["lr"], "zsl_t1")
    for index in range(3):
        progress.started(index, {"lr": 0.1})
        progress.finished(index, {"lr": 0.1}, 40.0 + index, seconds=2.0, reused=False)
    lines = finished_lines(capsys.readouterr().out)
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert lines[0].endswith("ETA 0:04") and lines[1].endswith("ETA 0:02")
    assert "ETA" not in lines[2] and re.search(r"best 42\.0 · elapsed \d+:\d\d$", lines[2])


def test_a_stacked_grid_shows_no_eta_after_its_joint_fit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every point starts before the joint fit; the lines come after it, nothing left."""
    progress = GridProgress(4, ["lr"], "zsl_t1")
    for index in range(4):
        progress.started(index, {"lr": 0.1})
    for index in range(4):
        progress.finished(index, {"lr": 0.1}, 40.0, seconds=0.5, reused=False)
    lines = finished_lines(capsys.readouterr().out)
    assert len(lines) == 4 and not any("ETA" in line for line in lines)


def test_recorded_points_give_no_eta_until_a_fit_is_timed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A resumed selection: points 1-2 recorded, point 3 fitted, point 4 to go."""
    progress = GridProgress(4, [], "zsl_t1")
    for index in (0, 1):
        progress.finished(index, {}, 40.0, seconds=3.0, reused=True)
    progress.started(2, {})
    progress.finished(2, {}, 41.0, seconds=3.0, reused=False)
    progress.started(3, {})
    progress.finished(3, {}, 42.0, seconds=3.0, reused=False)
    lines = finished_lines(capsys.readouterr().out)
    assert "ETA" not in lines[0] and lines[0].endswith("(recorded)")
    assert lines[2].endswith("ETA 0:03") and "ETA" not in lines[3]
