"""Every bad input to ``python train.py`` stops with one clear line (docs/errors.md).

Each case builds its bad input from the tiny xlsa17 fixture, calls ``zsl.cli.train.main`` in-process
and checks that it exits with a single line naming what is wrong and where (file, key, class,
config key). A few cases run ``train.py`` as a real subprocess to check that stderr holds that
line and no traceback. The troubleshooting table of docs/errors.md lists the same cases.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import N_CLASSES, REPO_ROOT, UNSEEN, TinyXlsa17, tiny_cli_args, write_xlsa17

from zsl.cli.train import run as main

pytestmark = pytest.mark.slow

#: cases that fail because of a bug in zsl/ (see the reason); none today
PENDING: dict[str, str] = {}

Build = Callable[[Path], list[str]]


#: a two-epoch ALE run on the tiny dataset under ``root`` (CSV logger, no progress bar)
cli_args = tiny_cli_args


def col(idx0: np.ndarray, dtype: Any = np.uint16) -> np.ndarray:
    """0-based indices -> a 1-based MATLAB column."""
    return (np.asarray(idx0) + 1).astype(dtype).reshape(-1, 1)


def loc0(ds: TinyXlsa17, key: str) -> np.ndarray:
    return np.asarray(ds.splits[key]).ravel().astype(np.int64) - 1


@dataclass
class Case:
    """One bad input: ``build(tmp_path)`` writes it and returns the arguments of train.py;
    the exit message must start with ``prefix`` and contain every fragment (``{tmp}`` is
    replaced by the test's ``tmp_path``)."""

    build: Build
    prefix: str
    fragments: tuple[str, ...]
    before_data: bool = False  # a config error: fails before anything is read or created


def tiny_run(*extra: str, **knobs: Any) -> Build:
    """The tiny dataset (``write_xlsa17(**knobs)``) with overrides ``extra``."""

    def build(tmp: Path) -> list[str]:
        ds = write_xlsa17(tmp / "data", **knobs)
        return cli_args(ds.root, tmp / "run", *extra)

    return build


def config_run(*extra: str) -> Build:
    """No data at all: a config error must stop the run before the data root is looked at."""

    def build(tmp: Path) -> list[str]:
        return cli_args(tmp / "no_such_root", tmp / "run", *extra)

    return build


def edited_file(name: str, change: Callable[[bytes], bytes]) -> Build:
    def build(tmp: Path) -> list[str]:
        ds = write_xlsa17(tmp / "data")
        path = ds.folder / name
        path.write_bytes(change(path.read_bytes()))
        return cli_args(ds.root, tmp / "run")

    return build


def edited(edit: Callable[[dict[str, Any], dict[str, Any]], None], *extra: str) -> Build:
    return tiny_run(*extra, edit=edit)


def _duplicate_name(splits: dict, feats: dict) -> None:
    splits["allclasses_names"][1, 0] = splits["allclasses_names"][0, 0]


def _twin_classes(splits: dict, feats: dict) -> None:
    splits["att"][:, 3] = splits["att"][:, 0]


def _val_is_test_unseen(splits: dict, feats: dict) -> None:
    splits["val_loc"] = splits["test_unseen_loc"].copy()


def _zero_based_labels(splits: dict, feats: dict) -> None:
    feats["labels"] = feats["labels"] - 1


def _zero_based_splits(splits: dict, feats: dict) -> None:
    """Every split saved 0-based: the one holding the first image then contains index 0."""
    for key in ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc"):
        splits[key] = splits[key].astype(np.float64) - 1


def _one_label_short(splits: dict, feats: dict) -> None:
    feats["labels"] = feats["labels"][:-1]


def _one_class_column_short(splits: dict, feats: dict) -> None:
    splits["att"] = splits["att"][:, :-1]


def _transposed_att(splits: dict, feats: dict) -> None:
    splits["att"] = splits["att"].T.copy()


def _nan_feature(splits: dict, feats: dict) -> None:
    feats["features"][3, 17] = np.nan


def _nan_attribute(splits: dict, feats: dict) -> None:
    splits["att"][1, 4] = np.nan


def _duplicate_trainval(splits: dict, feats: dict) -> None:
    loc = splits["trainval_loc"]
    splits["trainval_loc"] = np.vstack([loc, loc[:1]])


def _unseen_image_in_trainval(splits: dict, feats: dict) -> None:
    """One image of unseen class 8 moved from test_unseen_loc to trainval_loc (no image is
    in both: only the class leaks)."""
    labels0 = feats["labels"].ravel().astype(np.int64) - 1
    unseen = splits["test_unseen_loc"].ravel().astype(np.int64) - 1
    moved = unseen[labels0[unseen] == UNSEEN[0]][0]
    splits["test_unseen_loc"] = col(unseen[unseen != moved])
    trainval = splits["trainval_loc"].ravel().astype(np.int64) - 1
    splits["trainval_loc"] = col(np.sort(np.append(trainval, moved)))


def _test_seen_image_in_trainval(splits: dict, feats: dict) -> None:
    first = splits["test_seen_loc"].ravel().astype(np.int64)[0]
    trainval = np.sort(np.append(splits["trainval_loc"].ravel().astype(np.int64), first))
    splits["trainval_loc"] = col(trainval - 1)


def _seen_class_only_in_test(splits: dict, feats: dict) -> None:
    """Class 0 (``001.class_0``) loses its trainval images: it is tested as seen, never seen."""
    labels0 = feats["labels"].ravel().astype(np.int64) - 1
    trainval = splits["trainval_loc"].ravel().astype(np.int64) - 1
    splits["trainval_loc"] = col(trainval[labels0[trainval] != 0])


def _val_class_in_train(splits: dict, feats: dict) -> None:
    """A validation-class image (class 5) also in train_loc: the val protocol would train on it."""
    labels0 = feats["labels"].ravel().astype(np.int64) - 1
    val = splits["val_loc"].ravel().astype(np.int64) - 1
    image = val[labels0[val] == 5][0]
    train = splits["train_loc"].ravel().astype(np.int64) - 1
    splits["val_loc"] = col(val[val != image])
    splits["train_loc"] = col(np.sort(np.append(train, image)))


def _existing_run_dir(tmp: Path) -> list[str]:
    ds = write_xlsa17(tmp / "data")
    (tmp / "run").mkdir()
    (tmp / "run" / "metrics.json").write_text("{}")
    return cli_args(ds.root, tmp / "run")


def _run_dir_is_a_file(tmp: Path) -> list[str]:
    ds = write_xlsa17(tmp / "data")
    (tmp / "run").write_text("not a folder")
    return cli_args(ds.root, tmp / "run")


def _truncate(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _random_bytes(raw: bytes) -> bytes:
    return np.random.default_rng(0).bytes(len(raw))


def _error_page(raw: bytes) -> bytes:
    """What a failed download through some mirrors leaves under the file's name."""
    return b"<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title></head></html>"


MAT = "{tmp}/data/TINY/att_splits.mat"
RES = "{tmp}/data/TINY/res101.mat"
UNSEEN_NAME = f"{UNSEEN[0] + 1:03d}.class_{UNSEEN[0]}"

CASES: dict[str, Case] = {
    # ---------------------------------------------------------------- config (no data read)
    "unknown config key": Case(
        config_run("trainer.max_epoch=3"),
        "config error: unknown config key 'trainer.max_epoch'",
        ("valid keys there:", "max_epochs", "+trainer.max_epoch="),
        before_data=True,
    ),
    "unknown group option": Case(
        config_run("data=nope"),
        "config error: unknown data config 'nope'",
        ("available: ", "cub", "synthetic"),
        before_data=True,
    ),
    "unknown model": Case(
        config_run("model.name=alee"),
        "config error: unknown model 'alee'",
        ("available: ", "ale", "eszsl"),
        before_data=True,
    ),
    "override without '='": Case(
        config_run("max_epochs"),
        "config error: bad override 'max_epochs'",
        ("key=value",),
        before_data=True,
    ),
    "wrong value type": Case(
        config_run("trainer.max_epochs=ten"),
        "config error: trainer.max_epochs: expected an integer",
        ("the default is", "'ten'"),
        before_data=True,
    ),
    "unknown model parameter": Case(
        config_run("+model.params.momentum=0.9"),
        "config error: model.params.momentum is not a parameter of ale",
        ("lr", "weight_decay", "margin"),
        before_data=True,
    ),
    "bad enum value": Case(
        config_run("data.protocol=trainval"),
        "config error: data.protocol must be 'val' or 'test'",
        ("'trainval'",),
        before_data=True,
    ),
    "unknown accelerator": Case(
        config_run("trainer.accelerator=gpux"),
        "config error: trainer.accelerator 'gpux' is unknown",
        ("cpu", "cuda"),
        before_data=True,
    ),
    "value out of range": Case(
        config_run("data.val_seen_fraction=1.5"),
        "config error: data.val_seen_fraction must be in (0, 1), got 1.5",
        (),
        before_data=True,
    ),
    "broken interpolation": Case(
        config_run("data.root=${paths.nope}"),
        "config error: cannot resolve config interpolation in data.root",
        ("'paths.nope'",),
        before_data=True,
    ),
    # ---------------------------------------------------------------- files and keys
    "missing dataset folder": Case(
        tiny_run("data.name=TINYY"),
        "error: {tmp}/data/TINYY: dataset folder not found",
        ("data.root", "data.name"),
    ),
    "missing feature file": Case(
        tiny_run("data.feature_file=vgg_fc7.mat"),
        "error: {tmp}/data/TINY/vgg_fc7.mat: file not found; the dataset folder has "
        "res101.mat: use data.feature_file=res101.mat",
        (),
    ),
    "corrupt .mat": Case(
        edited_file("att_splits.mat", _random_bytes),
        f"error: {MAT}: cannot read MATLAB file",
        (),
    ),
    "HTML page saved as .mat": Case(
        edited_file("res101.mat", _error_page),
        f"error: {RES}: an HTML page, not a MATLAB file (a failed or redirected download)",
        (),
    ),
    "truncated .mat": Case(
        edited_file("res101.mat", _truncate),
        f"error: {RES}: cannot read MATLAB file",
        (),
    ),
    "no 'features' key": Case(
        tiny_run(drop_feature_keys=["features"]),
        f"error: {RES}['features']: missing key",
        ("'labels'", "'image_files'"),
    ),
    "no 'labels' key": Case(
        tiny_run(drop_feature_keys=["labels"]),
        f"error: {RES}['labels']: missing key",
        ("'features'",),
    ),
    "no split key": Case(
        tiny_run(drop_split_keys=["test_unseen_loc"]),
        f"error: {MAT}['test_unseen_loc']: missing key",
        ("'trainval_loc'",),
    ),
    "semantics key typo": Case(
        tiny_run("data.semantics_key=attr"),
        f"error: {MAT}['attr']: missing key",
        ("'att'", "'original_att'"),
    ),
    "semantics key not a matrix": Case(
        tiny_run("data.semantics_key=allclasses_names"),
        f"error: {MAT}['allclasses_names']: expected a numeric matrix",
        (),
    ),
    # ---------------------------------------------------------------- values
    "0-based labels": Case(
        edited(_zero_based_labels),
        f"error: {RES}['labels']: 1-based indices must lie in [1, {N_CLASSES}]",
        ("found range [0, ", "columns of att_splits.mat['att']", "0-based"),
    ),
    "0-based split indices": Case(
        edited(_zero_based_splits),
        f"error: {MAT}['test_unseen_loc']: 1-based indices must lie in [1, 120], found range [0,",
        ("saved 0-based?",),
    ),
    "feature/label count mismatch": Case(
        edited(_one_label_short),
        f"error: {RES}['labels']: 119 labels but 'features' has 120 columns",
        (),
    ),
    "semantics/class count mismatch": Case(
        edited(_one_class_column_short),
        f"error: {MAT}['att']: attribute matrix has {N_CLASSES - 1} class columns",
        (f"allclasses_names lists {N_CLASSES} classes",),
    ),
    "transposed semantics": Case(
        edited(_transposed_att),
        f"error: {MAT}['att']: attribute matrix has 6 class columns",
        ("looks transposed", "A x C"),
    ),
    "NaN features": Case(
        edited(_nan_feature),
        f"error: {RES}['features']: 1 non-finite values",
        ("(3, 17)",),
    ),
    "NaN attributes": Case(
        edited(_nan_attribute),
        f"error: {MAT}['att']: 1 non-finite values",
        ("(1, 4)",),
    ),
    "duplicate split indices": Case(
        edited(_duplicate_trainval),
        f"error: {MAT}['trainval_loc']: 1 duplicate image indices",
        ("listed once",),
    ),
    "empty split": Case(
        tiny_run(split_overrides={"test_unseen_loc": np.zeros((0, 1))}),
        f"error: {MAT}['test_unseen_loc']: is empty",
        (),
    ),
    # ---------------------------------------------------------------- leakage
    "unseen class in trainval": Case(
        edited(_unseen_image_in_trainval),
        f"error: {MAT}['trainval_loc', 'test_unseen_loc']: 1 class(es) occur in both splits",
        (f"{UNSEEN_NAME} (1 images in trainval_loc, 9 in test_unseen_loc)",),
    ),
    "train/test images overlap": Case(
        edited(_test_seen_image_in_trainval),
        f"error: {MAT}['trainval_loc', 'test_seen_loc']: 1 images appear in both splits",
        ("first 1-based index",),
    ),
    "seen class never trained on": Case(
        edited(_seen_class_only_in_test, "data.protocol=test", "selection.grid=false"),
        f"error: {MAT}['train_loc', 'trainval_loc']: 1 class(es) of train_loc never appear in "
        "trainval_loc (train classes must be trainval classes): 001.class_0",
        (),
    ),
    "validation class in train_loc": Case(
        edited(_val_class_in_train, "data.protocol=val"),
        f"error: {MAT}['train_loc', 'val_loc']: 1 class(es) occur in both splits",
        ("006.class_5 (1 images in train_loc, 9 in val_loc)",),
    ),
    # ---------------------------------------------------------------- images, runs, training
    "missing image root (CLIP)": Case(
        tiny_run("model=clip", "data.image_root={tmp}/no_images"),
        "error: {tmp}/no_images: image root does not exist",
        ("images/", "data.image_root"),
    ),
    "non-empty output_dir": Case(
        _existing_run_dir,
        "error: run directory {tmp}/run already exists and is not empty",
        ("output_dir",),
    ),
    "output_dir is a file": Case(
        _run_dir_is_a_file,
        "error: output_dir {tmp}/run is a file, not a folder",
        ("output_dir",),
    ),
    "diverging loss": Case(
        tiny_run("model=sje", "model.params.lr=1e37", "selection.grid=false"),
        "error: SJE: non-finite loss",
        ("at epoch ", ", step "),
    ),
    "diverged scores": Case(
        tiny_run("model=devise", "model.params.lr=1e38", "selection.grid=false"),
        "error: DeViSE: non-finite scores",
        ("at epoch ", ", step "),
    ),
    "GPU trainer without a GPU": Case(
        tiny_run("trainer=gpu"),
        "config error: trainer: No supported gpu backend found",
        (),
    ),
    "bad trainer precision": Case(
        tiny_run("trainer.precision=foo"),
        "config error: trainer: Precision 'foo' is invalid",
        ("Allowed precision values", "32-true"),
    ),
    "non-positive learning rate": Case(
        tiny_run("model.params.lr=-0.1", "selection.grid=false"),
        "config error: model.params (ale): ALE: lr must be positive, got -0.1",
        (),
    ),
    "negative seed": Case(
        config_run("seed=-1"),
        "config error: seed must be in [0, 2^32) (a random seed), got -1",
        (),
        before_data=True,
    ),
    "negative split seed": Case(
        config_run("data.split_seed=-2"),
        "config error: data.split_seed must be in [0, 2^32) (a random seed), got -2",
        (),
        before_data=True,
    ),
    "unwritable output_dir": Case(
        lambda tmp: cli_args(tmp / "data", Path("/proc/zsl-no-such-run")),
        "error: output_dir: cannot create or write the run directory /proc/zsl-no-such-run",
        (),
    ),
    "output_dir name too long": Case(
        lambda tmp: cli_args(tmp / "data", tmp / ("x" * 300)),
        "error: output_dir: cannot create or write the run directory",
        ("File name too long",),
    ),
    "no latent maps (LATEM)": Case(
        tiny_run("model=latem", "model.params.n_maps=0"),
        "config error: model.params (latem): LATEM: n_maps must be an integer >= 1, got 0",
        (),
    ),
    "duplicate class names": Case(
        edited(_duplicate_name),
        "error: {tmp}/data/TINY/att_splits.mat['allclasses_names']: class name '001.class_0' is "
        "listed twice (columns 1 and 2)",
        (),
    ),
    "indistinguishable classes": Case(
        edited(_twin_classes),
        "error: {tmp}/data/TINY/att_splits.mat['att']: classes 001.class_0 and 004.class_3 "
        "(columns 1 and 4) have identical semantic vectors",
        (),
    ),
    "validation classes are test classes": Case(
        edited(_val_is_test_unseen, "data.protocol=val"),
        "error: {tmp}/data/TINY/att_splits.mat['val_loc', 'trainval_loc']: 4 class(es) of "
        "val_loc never appear in trainval_loc (validation classes must be trainval classes)",
        ("009.class_8",),
    ),
}


def exit_message(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    assert isinstance(code, str), f"exit code {code!r} instead of a message"
    return code


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(reason=PENDING[name], strict=False))
        if name in PENDING
        else name
        for name in CASES
    ],
)
def test_bad_input_fails_with_one_clear_line(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    if name == "GPU trainer without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in case.build(tmp_path)]
    message = exit_message(argv)
    assert "\n" not in message and message.strip() == message, message
    assert message.startswith(case.prefix.replace("{tmp}", str(tmp_path))), message
    for fragment in case.fragments:
        assert fragment.replace("{tmp}", str(tmp_path)) in message, (fragment, message)
    if case.before_data:
        assert "no_such_root" not in message
    if name not in ("non-empty output_dir", "output_dir is a file"):
        # nothing left behind that would block rerunning the same command
        assert not (tmp_path / "run").exists()


def test_the_readme_table_has_a_row_per_case() -> None:
    """The troubleshooting table (docs/errors.md, linked from the README) is the user-facing
    copy of CASES: one row per bad input."""
    assert "docs/errors.md" in (REPO_ROOT / "README.md").read_text()
    # the first table; "## Unsafe or silently wrong input" lists tests/adversarial/'s cases
    section = (REPO_ROOT / "docs" / "errors.md").read_text().split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    listed = {row.split("|")[1].strip() for row in rows[1:]}
    # rows whose case lives in another test module (it needs an interrupted run first)
    elsewhere = {"unresumable checkpoint": "test_protocol_honesty.py"}
    assert listed == set(CASES) | set(elsewhere), (
        sorted(set(CASES) - listed),
        sorted(listed - set(CASES) - set(elsewhere)),
    )


# --------------------------------------------------------------------------- real processes

#: fail before any training starts: stderr must be exactly the error line
BEFORE_TRAINING = ("truncated .mat",)
#: fails while training: Lightning's own start-up lines may come first; the error is the last
DURING_TRAINING = ("diverging loss",)


def test_train_py_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    """``python train.py`` itself: exit status 1, no traceback, one error line (the whole of
    stderr when the run stops before training). The processes start together (each spends
    most of its time importing torch)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    procs = {}
    for name in (*BEFORE_TRAINING, *DURING_TRAINING):
        tmp = tmp_path / f"case{len(procs)}"
        tmp.mkdir()
        procs[name] = subprocess.Popen(
            [sys.executable, "train.py", *CASES[name].build(tmp)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        results = {name: (proc, *proc.communicate(timeout=300)) for name, proc in procs.items()}
    finally:
        for proc in procs.values():  # never leave a process behind (e.g. after a timeout)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, (proc, _out, err) in results.items():
        lines = [line for line in err.splitlines() if line.strip()]
        prefix = CASES[name].prefix.split("{tmp}")[0]
        assert proc.returncode == 1, (name, proc.returncode, err)
        assert "Traceback" not in err, (name, err)
        assert [line for line in lines if line.startswith(prefix)] == lines[-1:], (name, err)
        if name in BEFORE_TRAINING:
            assert len(lines) == 1, (name, err)
