"""Benchmarks beyond memory and beyond the shipped files:

- memory-mapped ``.npy`` features read the same benchmark as the ``.mat`` file, evaluation sets
  stay on disk, and bad ``.npy`` files stop with one line;
- chunked scoring gives exactly the metrics of one pass;
- synthetic features at a split-only benchmark's real shapes read through the loader in both
  protocols, are marked synthetic, and reach ``metrics.json``;
- ``experiments/scale_check.py``: 21,000 classes and 200,000 examples evaluated under 4 GB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyXlsa17, load_experiment

import zsl.models.base as base
from zsl.data.datamodule import MappedRows, ZSLDataModule
from zsl.data.errors import DataError
from zsl.data.formats.xlsa17 import labels_path, load_xlsa17, write_features_npy
from zsl.data.standin import FEATURE_FILE, synthesize_features
from zsl.models.classical.ale import ALE, bilinear_scores


def npy_copy(tiny: TinyXlsa17) -> Path:
    """The tiny benchmark's features as ``features.npy`` (+ labels) beside its ``res101.mat``."""
    return write_features_npy(tiny.folder / "features.npy", tiny.features, tiny.labels0)


@pytest.mark.parametrize("protocol", ["val", "test"])
def test_npy_features_read_the_same_benchmark_memory_mapped(
    tiny: TinyXlsa17, protocol: str
) -> None:
    npy_copy(tiny)
    mat = load_xlsa17(tiny.root, tiny.name, "res101.mat", protocol)  # type: ignore[arg-type]
    npy = load_xlsa17(tiny.root, tiny.name, "features.npy", protocol)  # type: ignore[arg-type]
    assert isinstance(npy.features, np.memmap)
    np.testing.assert_array_equal(np.asarray(npy.features), mat.features)
    np.testing.assert_array_equal(npy.labels, mat.labels)
    assert {k: v.tolist() for k, v in npy.locs.items()} == {
        k: v.tolist() for k, v in mat.locs.items()
    }
    assert not npy.synthetic_features


def test_evaluation_rows_stay_on_disk_and_equal_the_in_memory_ones(tiny: TinyXlsa17) -> None:
    npy_copy(tiny)
    kwargs = {"protocol": "test", "preprocess": "l2", "eval_batch_size": 7}
    mapped = ZSLDataModule(tiny.name, str(tiny.root), "features.npy", **kwargs)  # type: ignore[arg-type]
    memory = ZSLDataModule(tiny.name, str(tiny.root), "res101.mat", **kwargs)  # type: ignore[arg-type]
    mapped.setup(), memory.setup()
    assert isinstance(mapped.eval_x, MappedRows) and isinstance(memory.eval_x, torch.Tensor)
    for a, b in zip(mapped.test_dataloader(), memory.test_dataloader(), strict=True):
        torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)
        assert torch.equal(a.labels, b.labels)
    rows = torch.tensor([5, 0, 3, 3])  # any order, repeats: read sorted, returned as asked
    torch.testing.assert_close(mapped.eval_x[rows], memory.eval_x[rows], rtol=0, atol=0)
    torch.testing.assert_close(mapped.evaluation_examples().features, memory.eval_x, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_labels", "features_labels.npy: file not found"),
        ("float64", "expected N x D float32 rows"),
        ("nan", "1 non-finite values (first at index (3, 2))"),
        ("zero_based", "0 found: MATLAB indices are 1-based"),
        ("short_labels", "labels but features.npy has"),
    ],
)
def test_bad_npy_feature_files_stop_with_one_line(
    tiny: TinyXlsa17, damage: str, message: str
) -> None:
    path = npy_copy(tiny)
    features = tiny.features.astype(np.float32)
    if damage == "no_labels":
        labels_path(path).unlink()
    elif damage == "float64":
        np.save(path, features.astype(np.float64))
    elif damage == "nan":
        features[3, 2] = np.nan
        np.save(path, features)
    elif damage == "zero_based":
        np.save(labels_path(path), tiny.labels0)
    elif damage == "short_labels":
        np.save(labels_path(path), tiny.labels0[:-1] + 1)
    with pytest.raises(DataError, match="features") as err:
        load_xlsa17(tiny.root, tiny.name, "features.npy", "test")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_chunked_scoring_equals_one_pass(tiny: TinyXlsa17, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = ZSLDataModule(tiny.name, str(tiny.root), protocol="test", eval_batch_size=1000)
    dm.setup()
    torch.manual_seed(0)
    model = ALE.for_data(dm)
    model.eval()

    def evaluate() -> dict[str, float]:
        model._start_eval()
        for batch in dm.test_dataloader():
            model._eval_step(batch)
        assert model.evaluator is not None
        return model.evaluator.compute(None, choose_gamma=True).metrics

    whole = evaluate()
    monkeypatch.setattr(base, "SCORE_CHUNK", 3 * model.n_classes)  # 3 rows at a time
    chunked = evaluate()
    # the same predictions, hence the same accuracies; gamma comes from score differences, whose
    # last bits depend on the product's shape on some CPUs (BLAS blocks 3 rows and 1000 rows
    # differently)
    assert {k: v for k, v in chunked.items() if k != "gamma"} == {
        k: v for k, v in whole.items() if k != "gamma"
    }
    assert chunked["gamma"] == pytest.approx(whole["gamma"], rel=1e-5)


def test_evaluation_scores_in_float32_under_bf16_autocast(tiny: TinyXlsa17) -> None:
    """A bf16-mixed trainer runs validation under autocast; class scores must still be float32
    (bfloat16 keeps 8 mantissa bits and reorders close scores) and equal the float32 pass."""
    dm = ZSLDataModule(tiny.name, str(tiny.root), protocol="test", eval_batch_size=1000)
    dm.setup()
    torch.manual_seed(0)
    model = ALE.for_data(dm)
    model.eval()
    seen_dtypes: list[torch.dtype] = []

    def evaluate() -> dict[str, float]:
        model._start_eval()
        assert model.evaluator is not None
        update = model.evaluator.update

        def recording(scores: torch.Tensor, labels: torch.Tensor) -> None:
            seen_dtypes.append(scores.dtype)
            update(scores, labels)

        model.evaluator.update = recording  # type: ignore[method-assign]
        for batch in dm.test_dataloader():
            model._eval_step(batch)
        return model.evaluator.compute(None, choose_gamma=True).metrics

    whole = evaluate()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert evaluate() == whole
    assert seen_dtypes and set(seen_dtypes) == {torch.float32}


def test_bilinear_scores_agree_in_both_association_orders() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 40, generator=gen, dtype=torch.float64)
    for batch, classes in ((3, 200), (500, 10)):  # one shape picks each order
        x = torch.randn(batch, 64, generator=gen, dtype=torch.float64)
        s = torch.randn(classes, 40, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(bilinear_scores(x, w, s), (x @ w) @ s.T)


# ----------------------------------------------------------------------------- stand-ins


def test_standin_features_follow_the_split_file(tiny: TinyXlsa17, tmp_path: Path) -> None:
    """Labels consistent with every split, the class counts asked for, both protocols load,
    the data are marked synthetic; a second call reuses the files."""
    out = tmp_path / "standin"
    made = synthesize_features(tiny.root, tiny.name, out, dim=24, classes=(5, 3, 4))
    assert (made.n_images, made.feature_dim) == (tiny.n_images, 24)
    for protocol in ("val", "test"):
        data = load_xlsa17(out, tiny.name, FEATURE_FILE, protocol)  # type: ignore[arg-type]
        assert data.synthetic_features and data.features.shape == (tiny.n_images, 24)
    data = load_xlsa17(out, tiny.name, FEATURE_FILE, "test")
    unseen = set(data.classes_of("test_unseen_loc"))
    assert len(unseen) == 4 and not unseen & set(data.classes_of("trainval_loc"))
    assert set(data.classes_of("test_seen_loc")) <= set(data.classes_of("trainval_loc"))
    val = load_xlsa17(out, tiny.name, FEATURE_FILE, "val", exclude_test_from_val=False)
    assert len(val.classes_of("val_loc")) == 3 and len(val.classes_of("train_loc")) == 5
    stamp = (out / tiny.name / FEATURE_FILE).stat().st_mtime_ns
    synthesize_features(tiny.root, tiny.name, out, dim=24, classes=(5, 3, 4))
    assert (out / tiny.name / FEATURE_FILE).stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="add up to"):
        synthesize_features(tiny.root, tiny.name, tmp_path / "x", classes=(5, 3, 3))


def test_standin_run_records_synthetic_features(tiny: TinyXlsa17, tmp_path: Path) -> None:
    from zsl.cli.train import run as train_main

    out = tmp_path / "standin"
    synthesize_features(tiny.root, tiny.name, out, dim=24, classes=(5, 3, 4))
    run = tmp_path / "run"
    metrics = train_main(
        [
            "data=cub",
            f"data.root={out}",
            f"data.name={tiny.name}",
            f"data.feature_file={FEATURE_FILE}",
            "model=eszsl",
            "logger=csv",
            f"output_dir={run}",
            "trainer.enable_progress_bar=false",
        ]
    )
    assert metrics is not None and metrics["synthetic_features"] is True
    assert json.loads((run / "metrics.json").read_text())["synthetic_features"] is True


def test_standin_at_the_real_shapes_of_sun(shared_data: Path, tmp_path: Path) -> None:
    made = synthesize_features(shared_data / "xlsa17", "SUN", tmp_path, dim=8)
    data = load_xlsa17(tmp_path, "SUN", FEATURE_FILE, "test")
    assert data.features.shape == (14340, 8) and data.n_classes == 717
    assert made.classes == (580, 65, 72)
    assert len(data.classes_of("test_unseen_loc")) == 72
    assert len(data.classes_of("trainval_loc")) == 645
    assert {k: v.size for k, v in data.locs.items()} == {
        "trainval_loc": 10320,
        "test_seen_loc": 2580,
        "test_unseen_loc": 1440,
    }


# ----------------------------------------------------------------------------- 21k classes


def load_scale_check():  # type: ignore[no-untyped-def]
    return load_experiment("scale_check")


@pytest.mark.slow
def test_21000_classes_200000_examples_evaluate_under_4_gb(tmp_path: Path) -> None:
    """A held 200,000 x 21,000 score matrix alone would be 16.8 GB."""
    script = load_scale_check()
    script.write_benchmark(tmp_path, n_classes=21_000, n_seen=1_000, n_examples=200_000, dim=64)
    out = subprocess.run(
        [sys.executable, script.__file__, "--measure", "--root", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["classes"] == 21_000 and result["test_examples"] > 190_000
    assert result["peak_rss_gb"] < 4.0, result
    assert result["zsl_t1"] > 100 * 100 / 20_000, result  # far above chance (0.005%)
    assert result["gzsl_u"] > 0 and result["gzsl_s"] > 0
