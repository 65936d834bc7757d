"""Settings and data that used to be silently wrong, or a traceback, are one line now
(docs/errors.md):

* a value typed for a parameter the search grid covers fixes that axis (the run says so and
  records it); invalid values (negative, zero, NaN, infinite learning rates; negative decays)
  are refused whatever the grid, grid values included; ``model.search.grid={}`` means no grid;
* the cross-split checks of the test protocol run before any fit;
* degenerate data: complex numbers, all-zero features, an all-zero class semantic vector,
  features whose float32 squares overflow, a class with no image at all;
* a seed outside [0, 2^32), an invalid ``data.synthetic`` spec and the SLURM launcher without
  SLURM's commands are one line, not a traceback;
* the built-in data writes nothing into the working directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from adversarial_kit import environment, tiny_args
from conftest import UNSEEN, write_xlsa17

from zsl.cli.train import run
from zsl.run.fitting import Session

pytestmark = pytest.mark.slow


def refused(argv: list[str]) -> str:
    """The one line ``train.py argv`` exits with."""
    with pytest.raises(SystemExit) as err:
        run(argv)
    message = str(err.value.code)
    assert "\n" not in message, message
    return message


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_xlsa17(tmp_path / "data").root


# ----------------------------------------------------------------------------- grid and values


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "model.params.lr=-0.1",
            "config error: model.params (ale): ALE: lr must be positive, got -0.1",
        ),
        ("model.params.lr=0", "config error: model.params (ale): ALE: lr must be positive, got 0"),
        ("model.params.lr=nan", "config error: model.params: lr must be a finite number, got nan"),
        ("model.params.lr=inf", "config error: model.params: lr must be a finite number, got inf"),
        (
            "model.params.weight_decay=-1.0",
            "config error: model.params (ale): ALE: weight_decay must be >= 0, got -1.0",
        ),
        (
            "model.search.grid.lr=[0.01,-0.5]",
            "config error: model.search.grid.lr (ale): ALE: lr must be positive, got -0.5",
        ),
    ],
)
def test_invalid_values_are_refused_whatever_the_grid(
    root: Path, tmp_path: Path, override: str, expected: str
) -> None:
    assert refused(tiny_args(root, tmp_path / "run", override)) == expected
    assert not (tmp_path / "run").exists()


def test_a_typed_value_fixes_its_grid_axis(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = run(tiny_args(root, tmp_path / "run", "model.params.lr=0.02"))
    assert metrics is not None
    assert metrics["selected_params"]["lr"] == 0.02 and metrics["fixed_params"] == ["lr"]
    out = capsys.readouterr().out
    assert (
        "note: model.params.lr=0.02 given: it fixes that grid axis (grid values "
        "[0.001, 0.003, 0.01] not searched)" in out
    )
    assert "selection: 1 grid point(s) of ale" in out
    trials = json.loads((tmp_path / "run" / "selection.json").read_text())["trials"]
    assert [t["params"]["lr"] for t in trials] == [0.02]


def test_an_empty_grid_means_no_grid(root: Path, tmp_path: Path) -> None:
    metrics = run(tiny_args(root, tmp_path / "run", "model.search.grid={}"))
    assert metrics is not None and metrics["selected_params"]["lr"] == 0.003  # model.params
    trials = json.loads((tmp_path / "run" / "selection.json").read_text())["trials"]
    assert len(trials) == 1


def test_a_typed_nested_value_fixes_a_generator_axis(root: Path, tmp_path: Path) -> None:
    """``second_stage.cls_pca`` is a grid axis of f-CLSWGAN: the typed value is the one used."""
    from zsl.cli.compose import compose
    from zsl.cli.train import prepare

    argv = ["model=clswgan", "model.params.second_stage.cls_pca=8"]
    spec = prepare(compose(argv), argv)
    assert list(spec.model.search.grid) == ["gen_ema"]
    assert spec.model.params["second_stage"]["cls_pca"] == 8
    assert list(spec.selection.fixed) == ["second_stage.cls_pca"]
    assert list(spec.config.selection.fixed) == ["second_stage.cls_pca"]  # saved with the run


# ----------------------------------------------------------------------------- splits first


def _trainval_image_in_test_unseen(splits: dict, feats: dict) -> None:
    trainval = splits["trainval_loc"]
    splits["test_unseen_loc"] = np.vstack([splits["test_unseen_loc"], trainval[:1]])


def _trainval_image_in_test_seen(splits: dict, feats: dict) -> None:
    trainval = splits["trainval_loc"]
    splits["test_seen_loc"] = np.vstack([splits["test_seen_loc"], trainval[:1]])


def _test_seen_image_in_test_unseen(splits: dict, feats: dict) -> None:
    seen = splits["test_seen_loc"]
    splits["test_unseen_loc"] = np.vstack([splits["test_unseen_loc"], seen[:1]])


def _class_on_both_sides(splits: dict, feats: dict) -> None:
    """An image of unseen class 8 also listed in trainval_loc (moved, not shared)."""
    labels0 = feats["labels"].ravel().astype(np.int64) - 1
    unseen = splits["test_unseen_loc"].ravel().astype(np.int64) - 1
    moved = unseen[labels0[unseen] == UNSEEN[0]][0]
    splits["test_unseen_loc"] = (unseen[unseen != moved] + 1).reshape(-1, 1).astype(np.uint16)
    trainval = np.sort(np.append(splits["trainval_loc"].ravel().astype(np.int64), moved + 1))
    splits["trainval_loc"] = trainval.reshape(-1, 1).astype(np.uint16)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (_trainval_image_in_test_unseen, "['val_loc', 'test_unseen_loc']: 1 class(es) occur"),
        (_trainval_image_in_test_seen, "['trainval_loc', 'test_seen_loc']: 1 images appear in"),
        (_test_seen_image_in_test_unseen, "['train_loc', 'test_unseen_loc']: 1 class(es)"),
        (_class_on_both_sides, "['trainval_loc', 'test_unseen_loc']: 1 class(es) occur"),
    ],
)
def test_cross_split_checks_run_before_any_fit(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    edit: Callable[[dict, dict], None],
    fragment: str,
) -> None:
    ds = write_xlsa17(tmp_path / "data", edit=edit)

    def no_fit(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a fit started before the test split was checked")

    for name in ("fit_validation", "fit_stacked", "fit_shared"):
        monkeypatch.setattr(Session, name, no_fit)
    message = refused(tiny_args(ds.root, tmp_path / "run"))
    assert message.startswith(f"error: {ds.split_path}") and fragment in message, message
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- degenerate data


def _complex_attributes(splits: dict, feats: dict) -> None:
    splits["att"] = splits["att"] + 1j * 0.5


def _complex_features(splits: dict, feats: dict) -> None:
    feats["features"] = feats["features"].astype(np.complex64)


def _zero_features(splits: dict, feats: dict) -> None:
    feats["features"] = np.zeros_like(feats["features"])


def _zero_class_vector(splits: dict, feats: dict) -> None:
    splits["att"][:, 9] = 0.0


@pytest.mark.parametrize(
    ("edit", "where", "fragment"),
    [
        (_complex_attributes, "att_splits.mat['att']", "complex values (complex128)"),
        (_complex_features, "res101.mat['features']", "complex values (complex64)"),
        (_zero_features, "res101.mat['features']", "every feature is zero"),
        (
            _zero_class_vector,
            "att_splits.mat['att']",
            "1 class(es) have an all-zero semantic vector, which no model can score or "
            "normalise: 010.class_9 (column 10)",
        ),
    ],
)
@pytest.mark.parametrize("model", ["eszsl", "sae"])
def test_degenerate_data_is_one_line(
    tmp_path: Path, edit: Callable[[dict, dict], None], where: str, fragment: str, model: str
) -> None:
    ds = write_xlsa17(tmp_path / "data", edit=edit)
    message = refused(tiny_args(ds.root, tmp_path / "run", f"model={model}"))
    assert message.startswith(f"error: {ds.folder / where.split('[')[0]}[") and fragment in message


def test_images_with_all_zero_features_are_named_in_a_warning(tmp_path: Path) -> None:
    def two_zero_rows(splits: dict, feats: dict) -> None:
        feats["features"][:, [4, 9]] = 0.0

    ds = write_xlsa17(tmp_path / "data", edit=two_zero_rows)
    with pytest.warns(UserWarning, match=r"2 of 120 images have all-zero features \(first: row 4"):
        run(tiny_args(ds.root, tmp_path / "run", "model=eszsl"))


def test_features_whose_float32_squares_overflow_are_normalised_right(tmp_path: Path) -> None:
    """Rows of magnitude 1e25: float32 squares overflow, the rows became zero (chance
    accuracy); they now normalise like the same rows at magnitude 1."""
    from zsl.data.splits import _l2_rows

    rng = np.random.default_rng(0)
    rows = np.abs(rng.normal(size=(300, 16))).astype(np.float32)
    huge = (rows * np.float32(1e25)).astype(np.float32)
    assert not np.isfinite(np.linalg.norm(huge[:4], axis=1)).all()  # the overflow is real
    np.testing.assert_allclose(_l2_rows(huge), _l2_rows(rows), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(_l2_rows(huge), axis=1), 1.0, rtol=1e-5)

    def scale(splits: dict, feats: dict) -> None:
        feats["features"] = (feats["features"] * 1e25).astype(np.float32)

    plain = run(tiny_args(write_xlsa17(tmp_path / "a").root, tmp_path / "r1", "model=eszsl"))
    scaled = run(tiny_args(write_xlsa17(tmp_path / "b", edit=scale).root, tmp_path / "r2"))
    assert plain is not None and scaled is not None
    scaled_eszsl = run(
        tiny_args(write_xlsa17(tmp_path / "c", edit=scale).root, tmp_path / "r3", "model=eszsl")
    )
    assert scaled_eszsl is not None
    assert scaled_eszsl["zsl_t1"] == pytest.approx(plain["zsl_t1"], abs=1e-6)


def test_a_class_without_images_is_named_in_the_log_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unseen class 11 loses its images: it is neither trained on nor evaluated, and the run
    says so (it was left out without a word)."""

    def drop_class(splits: dict, feats: dict) -> None:
        labels0 = feats["labels"].ravel().astype(np.int64) - 1
        unseen = splits["test_unseen_loc"].ravel().astype(np.int64) - 1
        kept = unseen[labels0[unseen] != 11]
        splits["test_unseen_loc"] = (kept + 1).reshape(-1, 1).astype(np.uint16)

    ds = write_xlsa17(tmp_path / "data", edit=drop_class)
    metrics = run(tiny_args(ds.root, tmp_path / "run", "model=eszsl"))
    assert metrics is not None and metrics["classes_without_images"] == ["012.class_11"]
    assert (
        "warning: 1 class(es) have no image in trainval_loc or test_unseen_loc and are left "
        "out of training and evaluation: 012.class_11" in capsys.readouterr().err
    )


def test_a_normal_run_records_no_class_without_images(root: Path, tmp_path: Path) -> None:
    metrics = run(tiny_args(root, tmp_path / "run", "model=eszsl"))
    assert metrics is not None and metrics["classes_without_images"] == []


# ----------------------------------------------------------------------------- one line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "seed=4294967296",
            "config error: seed must be in [0, 2^32) (a random seed), got 4294967296",
        ),
        (
            "data.split_seed=-1",
            "config error: data.split_seed must be in [0, 2^32) (a random seed), got -1",
        ),
    ],
)
def test_seeds_outside_numpys_range_are_one_line(
    root: Path, tmp_path: Path, override: str, expected: str
) -> None:
    assert refused(tiny_args(root, tmp_path / "run", override)) == expected


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("data.synthetic.n_classes=1", "need >= 1 unseen and >= 2 seen classes"),
        ("data.synthetic.n_unseen=0", "need >= 1 unseen and >= 2 seen classes"),
        ("data.synthetic.feature_dim=0", "feature_dim must be >= 8, got 0"),
        ("+data.synthetic.colour=red", "got an unexpected keyword argument 'colour'"),
    ],
)
def test_an_invalid_synthetic_spec_is_one_line(
    tmp_path: Path, override: str, fragment: str
) -> None:
    message = refused(["logger=csv", f"output_dir={tmp_path / 'run'}", override])
    assert message.startswith("config error: data.synthetic: ") and fragment in message
    assert not (tmp_path / "run").exists()


def test_the_slurm_launcher_without_slurm_is_one_line(tmp_path: Path) -> None:
    env = environment()
    env["PATH"] = str(Path(sys.executable).parent)  # python, no sbatch/srun
    done = subprocess.run(
        [sys.executable, "-m", "zsl", "-m", "experiment=slurm", "model=eszsl"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: the SLURM launcher (experiment=slurm, hydra/launcher=submitit_slurm) needs "
        "sbatch and srun on PATH, not found here: run it on a SLURM login node, or use "
        "experiment=local_parallel to run the jobs on this machine"
    )


def test_the_built_in_data_writes_nothing_into_the_working_directory(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        metrics = run(["model=eszsl", "logger=csv", f"output_dir={tmp_path / 'run'}"])
    finally:
        os.chdir(here)
    assert metrics is not None and metrics["dataset"] == "SYNTHETIC"
    assert list(cwd.iterdir()) == []


def test_a_missing_data_root_for_real_data_is_one_line(tmp_path: Path) -> None:
    message = refused(["data=xlsa17", "data.name=CUB", "logger=csv", "data.root=null"])
    assert message == "config error: data.root is not set: the folder that holds CUB/"
