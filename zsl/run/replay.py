"""A run's single test evaluation, repeated from its checkpoint (``zsl-eval``): the same
metrics, per-class accuracies and figures on the data of its config, nothing trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zsl.errors import CheckpointError
from zsl.evaluation import Evaluation
from zsl.run.inference import load_for_inference

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    checkpoint: Path, out_dir: Path, config: Path | None = None, overrides: list[str] | None = None
) -> tuple[dict[str, Any], Evaluation]:
    """The test evaluation of a run, repeated from its checkpoint on the data of its config
    (with ``overrides``): metrics (with the checkpoint's validation-chosen gamma), per-class
    accuracy and the run's figures, written to ``out_dir``; nothing is trained."""
    from zsl.reporting.provenance import provenance
    from zsl.reporting.report import write_reports
    from zsl.run.builders import make_datamodule, make_trainer
    from zsl.run.callbacks import EvaluationRecorder
    from zsl.run.protocol import per_class_record

    model, spec = load_for_inference(checkpoint, config, overrides)
    if spec is None:
        raise CheckpointError(
            f"no config.yaml found beside or above {checkpoint}: pass --config <run>/config.yaml"
        )
    dm = make_datamodule(spec, "test")
    model.bind(dm)
    recorder = EvaluationRecorder()
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(
        spec.trainer, type(model), 1, False, validate=False, callbacks=[recorder], root_dir=out_dir
    )
    trainer.test(model, dm, verbose=False)
    assert recorder.test is not None
    evaluation = recorder.test
    title = f"{spec.model.name} on {spec.data.name} (test protocol, from {Path(checkpoint).name})"
    files = write_reports(evaluation, dm.class_space, out_dir, False, "test", title)  # type: ignore[arg-type]
    metrics: dict[str, Any] = dict(evaluation.metrics)
    metrics.update(
        protocol="test",
        dataset=spec.data.name,
        model=spec.model.name,
        checkpoint=str(checkpoint),
        per_class_accuracy=per_class_record(evaluation, dm.class_space),
        figures=[str(p) for p in files],
        provenance=provenance(spec.seed),
    )
    text = json.dumps(metrics, indent=2, default=float)
    (out_dir / "metrics_eval.json").write_text(text)
    return metrics, evaluation
