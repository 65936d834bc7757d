"""A user's files are data and a user's work is kept: checkpoints, interrupts, exit statuses
and one process per run directory (docs/errors.md, "Checkpoints, interrupts and run
directories").

* a checkpoint with a pickled object that would run code is refused, and the object never
  runs, through every entry point that reads one: ``resume=``, :func:`load_model`,
  :func:`load_generator`, ``zsl-generate``; a checkpoint naming a class outside the registry
  is refused without importing it;
* Ctrl-C (SIGINT) during a fit keeps the run and prints the resume command, exit status 130;
  ``resume=`` then finishes it;
* every console script exits 0 after a successful run, with nothing on stderr;
* a run directory is owned by one live process: a second run or a resume of a live run is
  refused in one line, a stale lock of a killed process is taken over, and two runs started
  together into one ``output_dir`` give one run and one refusal;
* resume of a run whose ``config.yaml`` or ``trials/<i>.json`` is corrupt is one line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from adversarial_kit import craft, environment, run_script, script, tiny_args
from conftest import write_xlsa17

from zsl.cli.train import run
from zsl.errors import CheckpointError
from zsl.models.checkpoint import load_model
from zsl.run.lock import LOCK_NAME, RunLock

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root, run directory) of one finished tiny ALE run, shared by this module."""
    base = tmp_path_factory.mktemp("finished")
    ds = write_xlsa17(base / "data")
    run_dir = base / "run"
    run(tiny_args(ds.root, run_dir, "keep_checkpoints=true"))  # the fits' last.ckpt too
    return ds.root, run_dir


def interrupted_copy(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run as if killed during its final fit (no metrics, no model)."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "metrics.json").unlink()
    (run_dir / "model.ckpt").unlink()
    return run_dir


# ----------------------------------------------------------------------------- checkpoints


def test_resume_refuses_a_crafted_checkpoint_without_running_it(
    finished_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir = interrupted_copy(finished_run[1], tmp_path)
    last = run_dir / "checkpoints" / "final" / "last.ckpt"
    marker = tmp_path / "code-ran"
    craft(last, last, marker)
    with pytest.raises(SystemExit) as err:
        run([f"resume={run_dir}"])
    assert not marker.exists()
    message = str(err.value.code)
    assert message.startswith(f"resume error: {last} holds objects other than tensors")
    assert "refused: loading it could run code" in message and "delete it" in message
    assert "\n" not in message
    assert run_dir.is_dir() and last.is_file()  # the user's run is not touched


@pytest.mark.parametrize("entry", ["load_model", "load_generator", "zsl-generate"])
def test_a_crafted_checkpoint_never_runs_code(
    finished_run: tuple[Path, Path], tmp_path: Path, entry: str
) -> None:
    marker = tmp_path / "code-ran"
    crafted = craft(finished_run[1] / "model.ckpt", tmp_path / "model.ckpt", marker)
    if entry == "load_model":
        with pytest.raises(CheckpointError, match="holds objects other than tensors"):
            load_model(crafted)
    elif entry == "load_generator":
        from zsl.models.generative.synthesis import load_generator

        with pytest.raises(CheckpointError, match="could run code"):
            load_generator(crafted)
    else:
        from zsl.cli.generate import main

        np.save(tmp_path / "att.npy", np.ones((2, 6), dtype=np.float32))
        argv = ["--checkpoint", str(crafted), "--attributes", str(tmp_path / "att.npy")]
        with pytest.raises(SystemExit) as err:
            main([*argv, "--out", str(tmp_path / "x.npy")])
        assert str(err.value.code).startswith(f"error: {crafted} holds objects other than")
        assert not (tmp_path / "x.npy").exists()
    assert not marker.exists()


def test_a_checkpoint_naming_a_class_outside_the_registry_is_refused(
    finished_run: tuple[Path, Path], tmp_path: Path
) -> None:
    state = torch.load(finished_run[1] / "model.ckpt", weights_only=True)
    assert state["zsl_model_class"] == "zsl.models.classical.ale:ALE"  # every model records it
    state["zsl_model_class"] = "subprocess:Popen"
    torch.save(state, tmp_path / "hijacked.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "hijacked.ckpt")
    assert str(err.value) == (
        f"{tmp_path / 'hijacked.ckpt'} names the model class 'subprocess:Popen', which is not a "
        "registered zsl model"
    )
    model = load_model(finished_run[1] / "model.ckpt")  # the real one loads, in eval mode
    assert type(model).__name__ == "ALE" and not model.training


def test_a_checkpoint_that_is_not_a_generator_is_refused_by_zsl_generate(
    finished_run: tuple[Path, Path], tmp_path: Path
) -> None:
    from zsl.cli.generate import main

    np.save(tmp_path / "att.npy", np.ones((2, 6), dtype=np.float32))
    argv = ["--checkpoint", str(finished_run[1] / "model.ckpt")]
    argv += ["--attributes", str(tmp_path / "att.npy"), "--out", str(tmp_path / "x.npy")]
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert str(err.value.code) == (
        f"error: {finished_run[1] / 'model.ckpt'} holds a ALE model, not a feature generator "
        "(f-CLSWGAN, CADA-VAE, SE-GZSL, f-VAEGAN, tf-VAEGAN)"
    )


def test_a_truncated_checkpoint_is_one_line_in_zsl_generate(
    finished_run: tuple[Path, Path], tmp_path: Path
) -> None:
    from zsl.cli.generate import main

    raw = (finished_run[1] / "model.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(raw[: len(raw) // 2])
    np.save(tmp_path / "att.npy", np.ones((2, 6), dtype=np.float32))
    argv = ["--checkpoint", str(tmp_path / "cut.ckpt"), "--attributes", str(tmp_path / "att.npy")]
    with pytest.raises(SystemExit) as err:
        main([*argv, "--out", str(tmp_path / "x.npy")])
    message = str(err.value.code)
    assert message.startswith(f"error: {tmp_path / 'cut.ckpt'} cannot be read as a checkpoint (")
    assert "\n" not in message


def test_complex_attributes_are_refused_by_zsl_generate(tmp_path: Path) -> None:
    from zsl.models.generative.synthesis import generate

    with pytest.raises(ValueError, match="attributes must be real numbers, got .* complex128"):
        generate(str(tmp_path / "unused.ckpt"), np.ones((2, 6), dtype=np.complex128), 3)


# ----------------------------------------------------------------------------- resume


def test_a_corrupt_config_yaml_on_resume_is_one_line(
    finished_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir = interrupted_copy(finished_run[1], tmp_path)
    (run_dir / "config.yaml").write_text("model: [unclosed\n  data: {")
    with pytest.raises(SystemExit) as err:
        run([f"resume={run_dir}"])
    message = str(err.value.code)
    assert message.startswith(
        f"resume error: resume={run_dir}: {run_dir / 'config.yaml'} is unreadable or corrupt ("
    )
    assert message.endswith("the run cannot be resumed, start a new one")


def test_a_corrupt_trial_record_on_resume_is_one_line(
    finished_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir = interrupted_copy(finished_run[1], tmp_path)
    (run_dir / "trials" / "1.json").write_text('{"params": {"lr": 0.0')
    with pytest.raises(SystemExit) as err:
        run([f"resume={run_dir}"])
    message = str(err.value.code)
    assert message.startswith(f"resume error: {run_dir / 'trials' / '1.json'} is unreadable")
    assert message.endswith("delete it to redo grid point 1")


# ----------------------------------------------------------------------------- run directories


def test_a_second_run_into_a_live_run_directory_is_refused(tmp_path: Path) -> None:
    ds = write_xlsa17(tmp_path / "data")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with RunLock(run_dir):  # a live holder (this process, another open file)
        with pytest.raises(SystemExit) as err:
            run(tiny_args(ds.root, run_dir))
        message = str(err.value.code)
        assert message.startswith(f"error: run directory {run_dir} is in use by process ")
        assert message.endswith("wait for it to end, or choose another output_dir")
        assert (run_dir / LOCK_NAME).is_file()  # the holder's lock is left alone
    assert not (run_dir / LOCK_NAME).exists()  # released on exit


def test_resume_of_a_live_run_is_refused(finished_run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir = interrupted_copy(finished_run[1], tmp_path)
    with RunLock(run_dir), pytest.raises(SystemExit) as err:
        run([f"resume={run_dir}"])
    assert f"run directory {run_dir} is in use by process {os.getpid()}" in str(err.value.code)


def test_a_stale_lock_of_a_killed_process_is_taken_over(
    finished_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = interrupted_copy(finished_run[1], tmp_path)
    stale = {"pid": 999999, "host": "gone", "started": 0.0}
    (run_dir / LOCK_NAME).write_text(json.dumps(stale))  # its process died: no flock held
    metrics = run([f"resume={run_dir}"])
    assert (
        f"note: {run_dir} was locked by process 999999, which no longer runs; its lock is "
        "taken over" in capsys.readouterr().out
    )
    assert metrics is not None and (run_dir / "metrics.json").is_file()
    assert not (run_dir / LOCK_NAME).exists()


def test_two_runs_started_together_into_one_output_dir(tmp_path: Path) -> None:
    """Both start at once: one runs, the other is refused in one line; never two results."""
    ds = write_xlsa17(tmp_path / "data")
    run_dir = tmp_path / "shared"
    argv = [sys.executable, "-m", "zsl", *tiny_args(ds.root, run_dir)]
    procs = [
        subprocess.Popen(argv, cwd=tmp_path, env=environment(), stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, err in results if code == 1).strip().splitlines()
    assert len(refused) == 1 and refused[0].startswith(f"error: run directory {run_dir}")
    assert ("is in use by process" in refused[0]) or ("already exists" in refused[0])
    assert json.loads((run_dir / "metrics.json").read_text())["model"] == "ale"


# ----------------------------------------------------------------------------- interrupts


def test_ctrl_c_keeps_the_run_and_resume_finishes_it(tmp_path: Path) -> None:
    """A live run owns its directory (a second run and a resume are refused, naming its
    process); Ctrl-C stops it with status 130 and the resume command; resume finishes it."""
    ds = write_xlsa17(tmp_path / "data")
    run_dir = tmp_path / "run"
    args = tiny_args(ds.root, run_dir, "trainer.max_epochs=400", "model.search.patience=null")
    args += ["trainer.checkpoint_interval_s=0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "zsl", *args],
        cwd=tmp_path,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not list(run_dir.glob("checkpoints/*/last.ckpt")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # while it runs, the directory is its own: no second run, no resume of it
    ds_args = tiny_args(ds.root, run_dir, "model=eszsl")
    for argv in ([f"resume={run_dir}"], ds_args):
        with pytest.raises(SystemExit) as refusal:
            run(argv)
        assert str(refusal.value.code).startswith(
            f"error: run directory {run_dir} is in use by process {proc.pid} on "
        )
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: SIGINT received during ")
    assert last.endswith(f"continue with: python train.py resume={run_dir}")
    assert "Traceback" not in err
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "metrics.json").exists()
    assert not (run_dir / LOCK_NAME).exists()
    metrics = run([f"resume={run_dir}"])
    assert metrics is not None and metrics["model"] == "ale"


# ----------------------------------------------------------------------------- exit statuses


def test_console_scripts_exit_zero_with_nothing_on_stderr(
    finished_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """``zsl-train``, ``zsl-data``, ``zsl-generate`` (a refusal: status 1, one line) and every
    script's ``--help`` as installed: ``sys.exit(main())`` must not turn a return value into
    status 1."""
    root = finished_run[0]
    train = run_script(
        [script("zsl-train"), *tiny_args(root, tmp_path / "run", "model=eszsl")],
        tmp_path,
    )
    assert (train.returncode, train.stderr) == (0, ""), train.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()
    verify = run_script(
        [script("zsl-data"), "verify", "xlsa17", "--root", str(root), "--datasets", "TINY"],
        tmp_path,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    scripts = ("zsl-train", "zsl-extract", "zsl-custom", "zsl-generate", "zsl-benchmark")
    for name in (*scripts, "zsl-predict", "zsl-eval"):
        helped = run_script([script(name), "--help"], tmp_path)
        assert (helped.returncode, helped.stderr) == (0, ""), (name, helped.stderr)
    bad = run_script([script("zsl-generate"), "--checkpoint", "missing.ckpt"], tmp_path)
    assert bad.returncode == 2  # argparse: --attributes and --out are required


def test_zsl_generate_exits_zero_after_writing_features(tmp_path: Path) -> None:
    """A tiny f-CLSWGAN checkpoint from a real run, then ``zsl-generate`` as installed."""
    ds = write_xlsa17(tmp_path / "data")
    run_dir = tmp_path / "run"
    fast = ["model=clswgan", "trainer.max_epochs=1", "model.search.grid={}"]
    fast += ["model.params.second_stage.cls_steps=10", "model.params.pretrain_epochs=1"]
    run(tiny_args(ds.root, run_dir, *fast))
    np.save(tmp_path / "att.npy", np.eye(6, dtype=np.float32)[:2])
    argv = [script("zsl-generate"), "--checkpoint", str(run_dir / "model.ckpt")]
    argv += ["--attributes", str(tmp_path / "att.npy"), "--n", "3", "--out", "x.npy"]
    done = run_script(argv, tmp_path)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert np.load(tmp_path / "x.npy").shape == (6, 16)
