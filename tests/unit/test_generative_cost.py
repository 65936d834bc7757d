"""``experiments/generative_cost.py`` at toy sizes: it builds every generator from its CPU
config, times a training iteration and an evaluation of each, and prints one row per model."""

from __future__ import annotations

import sys

import pytest
from conftest import load_experiment

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_generative_cost_times_every_generator(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], precision: str
) -> None:
    script = load_experiment("generative_cost")
    monkeypatch.setattr(script, "STEP_CONTEXT", script.STEP_CONTEXT)  # restored afterwards
    # toy shapes; N_REAL above cls_pca (256) so that the classifier's projection is used
    for name, value in dict(D=64, A=8, SEEN=6, UNSEEN=2, BATCH=20, N_REAL=300).items():
        monkeypatch.setattr(script, name, value)
    argv = ["generative_cost.py", "--repeats", "1", "--threads", "1", "--precision", precision]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    out = capsys.readouterr().out
    assert f", {precision}; CUB sizes" in out
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith(("| model", "| ---"))
    ]
    assert [row[0] for row in rows] == ["cadavae", "clswgan", "segzsl", "fvaegan", "tfvaegan"]
    for row in rows:
        step, epoch, evaluation = (float(cell) for cell in row[1:])
        assert step > 0 and evaluation > 0
        assert epoch == pytest.approx(step * -(-300 // 20), abs=0.06)
