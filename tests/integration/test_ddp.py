"""Multi-process (DDP) training on CPU with 2 gloo processes.

* The metrics gathered over 2 processes, each holding an uneven, interleaved shard of fixed
  random scores, equal the single-process metrics (ZSL T1, u/s/H, calibrated H, AUSUC).
* Under Lightning's DDP (``zsl.dist.make_strategy("ddp")``, the datamodule's own sharding)
  every step's batch and the evaluation set are split across the ranks (each rank sees only
  its part), the ranks keep identical weights, take identical selection decisions, the
  generative models train identical final classifiers, and the validation history equals a
  single-process fit.
* ``python train.py ... trainer=ddp trainer.accelerator=cpu trainer.devices=2`` writes the
  same ``metrics.json`` as ``trainer=cpu``.

The workers run in spawned processes that set the environment torchrun would (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ...) and start the gloo group themselves; Lightning then
joins that group instead of launching processes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO_ROOT, write_xlsa17

pytestmark = pytest.mark.slow

WORLD = 2
TIMEOUT_S = 240

# ----------------------------------------------------------------------------- metric data

N_SAMPLES = 600
N_CLASSES = 15
SEEN_IDS = list(range(9))  # 9..13 unseen, 14 outside the evaluation universe
OUTSIDE = 14


def metric_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random float32 scores [N, C] (seen-biased, informative) and targets [N]."""
    rng = np.random.default_rng(123)
    target = rng.integers(0, OUTSIDE, size=N_SAMPLES)
    scores = rng.normal(size=(N_SAMPLES, N_CLASSES))
    scores[np.arange(N_SAMPLES), target] += 1.2
    scores[:, SEEN_IDS] += 0.6  # calibration matters
    scores[:, OUTSIDE] += 9.0  # must never be predicted
    return torch.from_numpy(scores.astype(np.float32)), torch.from_numpy(target)


def shard(rank: int) -> torch.Tensor:
    """Uneven (40/60), interleaved indices of ``rank``: the gathered order differs from the
    single-process order and every class is split across both ranks."""
    index = torch.arange(N_SAMPLES)
    first = (index * 7) % 5 < 2
    return index[first] if rank == 0 else index[~first]


def build_metrics(sync: bool = True) -> tuple[Any, Any]:
    from zsl.metrics import PerClassAccuracy, SeenUnseenStats

    seen = torch.zeros(N_CLASSES, dtype=torch.bool)
    seen[SEEN_IDS] = True
    universe = torch.ones(N_CLASSES, dtype=torch.bool)
    universe[OUTSIDE] = False
    stats = SeenUnseenStats(seen, universe_mask=universe, sync_on_compute=sync)
    per_class = PerClassAccuracy(N_CLASSES, sync_on_compute=sync)
    return stats, per_class


def update(stats: Any, per_class: Any, index: torch.Tensor, batch: int) -> None:
    scores, target = metric_data()
    for part in index.split(batch):
        stats.update(scores[part], target[part])
        masked = scores[part].clone()
        masked[:, OUTSIDE] = float("-inf")
        per_class.update(masked.argmax(dim=1), target[part])


def metric_values(stats: Any, per_class: Any) -> dict[str, Any]:
    """Everything the evaluation reports (collective calls under DDP: every rank calls them)."""
    gamma = stats.best_gamma("h")
    u, s, h = stats.gzsl(0.0)
    cu, cs, ch = stats.gzsl(gamma)
    gammas, curve_u, curve_s = stats.curve()
    unseen = torch.tensor([c for c in range(OUTSIDE) if c not in SEEN_IDS])
    return {
        "zsl_t1": stats.zsl_accuracy(),
        "gzsl": (u, s, h),
        "gamma": gamma,
        "gzsl_cal": (cu, cs, ch),
        "ausuc": stats.ausuc(),
        "curve": (gammas, curve_u, curve_s),
        "per_class": per_class.compute().cpu(),
        "per_class_unseen_mean": float(per_class.mean_over(unseen)),
    }


# ----------------------------------------------------------------------------- Lightning data

TRAIN_BATCH = 7
EVAL_BATCH = 13
SMALL = {
    "ale": {"lr": 0.01, "weight_decay": 0.0, "margin": 1.0},
    "eszsl": {"feature_reg": 1.0, "semantic_reg": 1.0, "negative_label": 0.0},
    "cmt_novelty": {"hidden": 8, "lr": 0.01, "novelty": True, "outlier_fraction": 0.2},
    "clswgan": {
        "gen_hidden": 16,
        "critic_hidden": 16,
        "lr": 1e-3,
        "n_critic": 2,
        "pretrain_epochs": 2,
        "second_stage": {"n_synth": 8, "cls_epochs": 2, "cls_batch_size": 16},
    },
    "cadavae": {
        "latent_dim": 4,
        "feature_hidden": [16, 16],
        "attribute_hidden": [16, 16],
        "n_seen_per_class": 8,
        "second_stage": {"n_synth": 8, "cls_epochs": 2, "cls_batch_size": 16},
    },
}
EPOCHS = 2


class Recorder(pl.Callback):
    """Records what each training step and evaluation batch of this rank held."""

    def __init__(self) -> None:
        self.train: list[tuple[int, float]] = []  # (examples, share) per step
        self.eval: list[int] = []  # examples per validation batch

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        self.train.append((int(batch.labels.numel()), float(batch.share)))

    def on_validation_batch_start(self, trainer: Any, module: Any, batch: Any, *_: Any) -> None:
        self.eval.append(int(batch.labels.numel()))


def lightning_fit(model_name: str, data_root: str, ddp: bool) -> dict[str, Any]:
    """Fit ``model_name`` on the tiny benchmark (val protocol, validating every epoch) in this
    process, under DDP across the current process group or alone."""
    from zsl import dist
    from zsl.data.datamodule import ZSLDataModule
    from zsl.models import get_model_class
    from zsl.run.callbacks import EvaluationRecorder

    pl.seed_everything(0, verbose=False)
    cls = get_model_class(model_name)
    dm = ZSLDataModule(
        name="TINY",
        root=data_root,
        protocol="val",
        preprocess="l2",
        batch_size=0 if cls.closed_form else TRAIN_BATCH,
        eval_batch_size=EVAL_BATCH,
    )
    dm.setup()
    space = dm.class_space
    model = cls(space.feature_dim, space.n_attributes, space.n_classes, **SMALL[model_name])
    model.bind(dm)
    recorder = Recorder()
    evaluations = EvaluationRecorder()
    trainer = pl.Trainer(
        max_epochs=1 if cls.closed_form else EPOCHS,
        accelerator="cpu",
        devices=WORLD if ddp else 1,
        strategy=dist.make_strategy("ddp") if ddp else "auto",
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[recorder, evaluations],
    )
    trainer.fit(model, dm)
    out: dict[str, Any] = {
        "history": evaluations.history,
        "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "train": recorder.train,
        "eval": recorder.eval,
        "n_train": int(dm.train_y.numel()),
        "n_eval": int(dm.eval_y.numel()),
    }
    classifier = getattr(model, "_classifier", None)
    if classifier is not None:
        out["classifier"] = [t.detach().cpu().clone() for t in classifier]
    return out


# ----------------------------------------------------------------------------- workers


def worker(rank: int, port: int, out_dir: str, data_root: str, models: list[str]) -> None:
    """One rank: the environment torchrun would set, the gloo group, then every check."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
        WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=TIMEOUT_S)
    )
    from zsl import dist

    assert dist.global_rank() == rank and dist.world_size() == WORLD
    index = shard(rank)
    stats, per_class = build_metrics()
    update(stats, per_class, index, batch=37)
    local_stats, local_per_class = build_metrics(sync=False)
    update(local_stats, local_per_class, index, batch=37)
    result: dict[str, Any] = {
        "synced": metric_values(stats, per_class),
        "local": metric_values(local_stats, local_per_class),
        "local_samples": int(torch.cat(stats.target).numel()),  # states stay local after sync
    }
    for name in models:
        result[name] = lightning_fit(name, data_root, ddp=True)
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_workers(out_dir: Path, data_root: Path, models: list[str]) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    context = mp.start_processes(
        worker,
        args=(free_port(), str(out_dir), str(data_root), models),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in context.processes:
                if proc.is_alive():
                    proc.kill()
            pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


# ----------------------------------------------------------------------------- train.py runs

SYNTHETIC = [
    "data=synthetic",
    "data.synthetic.n_classes=16",
    "data.synthetic.n_unseen=4",
    "data.synthetic.n_val=4",
    "data.synthetic.n_attributes=12",
    "data.synthetic.feature_dim=32",
    "data.synthetic.min_per_class=10",
    "data.synthetic.max_per_class=30",
    "data.batch_size=32",
    "data.eval_batch_size=50",  # several evaluation batches, each split across the ranks
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.deterministic=true",
]
# ESZSL (closed form) under DDP is covered by the workers; a train.py pair of it would cost
# three more interpreter starts (~8 s of CPU each on the 2-core reference machine)
CLI_RUNS = {  # name -> overrides
    "ale_cpu": ["model=ale", "trainer.max_epochs=3"],
    "ale_ddp": ["model=ale", "trainer.max_epochs=3", "trainer=ddp"],
}
DDP_CPU = ["trainer.accelerator=cpu", f"trainer.devices={WORLD}"]
PERCENT_KEYS = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_u_cal", "gzsl_s_cal", "gzsl_h_cal")


def cli_args(name: str, data_dir: Path, run_dir: Path) -> list[str]:
    extra = CLI_RUNS[name] + (DDP_CPU if name.endswith("_ddp") else [])
    return [*SYNTHETIC, f"data.root={data_dir}", f"output_dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def cli_procs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Start every ``train.py`` run (they run while the workers below do)."""
    from zsl.cli.compose import compose
    from zsl.data.synthetic import SyntheticSpec, ensure_synthetic

    base = tmp_path_factory.mktemp("ddp_cli")
    data_dir = base / "data"
    cfg = compose(cli_args("ale_cpu", data_dir, base / "unused"))
    # generated once here: concurrent runs must not race to write it
    ensure_synthetic(data_dir / cfg.data.name, SyntheticSpec(**cfg.data.synthetic))
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("ZSL_RUN_DIR", None)
    procs = {}
    for name in CLI_RUNS:
        args = cli_args(name, data_dir, base / name)
        proc = subprocess.Popen(
            [sys.executable, "train.py", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: the DDP child goes with it
        )
        procs[name] = (proc, base / name)
    yield procs
    for proc, _ in procs.values():  # never leave a run behind (e.g. after a failure)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.fixture(scope="module")
def cli_runs(cli_procs: Any, ranks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Wait for the ``train.py`` runs: ``{name: {"rc", "stdout", "stderr", "run_dir"}}``."""
    out = {}
    for name, (proc, run_dir) in cli_procs.items():
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        out[name] = {"rc": proc.returncode, "stdout": stdout, "stderr": stderr, "dir": run_dir}
    return out


def explain(run: dict[str, Any]) -> str:
    return f"exit {run['rc']}\n{run['stdout'][-3000:]}\n{run['stderr'][-5000:]}"


# ----------------------------------------------------------------------------- tests

#: cmt_novelty fits its detector's buffers from the training images before every evaluation
DDP_MODELS = ["ale", "eszsl", "cmt_novelty", "clswgan", "cadavae"]
EXACT_MODELS = ["ale", "eszsl"]  # no random draws in training: DDP must match one process


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_xlsa17(tmp_path_factory.mktemp("ddp_tiny") / "data").root


@pytest.fixture(scope="module")
def ranks(cli_procs: Any, tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """What each of the 2 gloo workers recorded (the ``train.py`` runs start first)."""
    return run_workers(tmp_path_factory.mktemp("ddp_workers"), tiny_root, DDP_MODELS)


@pytest.fixture(scope="module")
def single(tiny_root: Path) -> dict[str, dict[str, Any]]:
    """The same fits in this (single) process."""
    return {name: lightning_fit(name, str(tiny_root), ddp=False) for name in EXACT_MODELS}


def assert_same(a: Any, b: Any, what: str, exact: bool = True) -> None:
    if isinstance(a, torch.Tensor):
        if exact:
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=what)
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=what)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{what}[{i}]", exact)
    elif exact:
        assert a == b or (math.isnan(a) and math.isnan(b)), (what, a, b)
    else:
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12), (what, a, b)


def assert_history_close(ddp: list[dict[str, float]], one: list[dict[str, float]]) -> None:
    """Accuracies to 1e-6 percentage points; gamma and AUSUC to 1e-5 relative.

    DDP sums the ranks' gradients in another order than one process sums the batch, so the
    weights differ in the last float32 bits: accuracies (arg-max decisions) stay the same, the
    selected gamma (a midpoint between two float32 score differences) moves by a few ulps."""
    assert [h["epoch"] for h in ddp] == [h["epoch"] for h in one]
    for a, b in zip(ddp, one):
        for key in PERCENT_KEYS:
            assert abs(a[key] - b[key]) <= 1e-6, (a["epoch"], key, a[key], b[key])
        for key in ("gamma", "ausuc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (key, a[key], b[key])


def test_metrics_gathered_over_two_processes_equal_single_process(
    ranks: list[dict[str, Any]],
) -> None:
    stats, per_class = build_metrics()
    update(stats, per_class, torch.arange(N_SAMPLES), batch=64)
    single_values = metric_values(stats, per_class)
    # each rank really held only its shard
    assert [r["local_samples"] for r in ranks] == [shard(r).numel() for r in range(WORLD)]
    assert sum(r["local_samples"] for r in ranks) == N_SAMPLES
    for rank, result in enumerate(ranks):
        synced = result["synced"]
        # accuracies, gamma and per-class numbers are bit-identical; the curve's u/s and
        # AUSUC are float64 sums taken in another order (rank 0's samples, then rank 1's)
        for key in ("zsl_t1", "gzsl", "gamma", "gzsl_cal", "per_class", "per_class_unseen_mean"):
            assert_same(synced[key], single_values[key], f"rank {rank}: {key}")
        assert_same(synced["curve"], single_values["curve"], f"rank {rank}: curve", exact=False)
        assert_same(synced["ausuc"], single_values["ausuc"], f"rank {rank}: ausuc", exact=False)
        # without the gather a rank would report the numbers of its own shard
        local = result["local"]
        assert local["zsl_t1"] != single_values["zsl_t1"]
        assert local["gzsl"] != single_values["gzsl"]


@pytest.mark.parametrize("model", DDP_MODELS)
def test_each_rank_sees_its_part_of_every_batch(ranks: list[dict[str, Any]], model: str) -> None:
    r0, r1 = ranks[0][model], ranks[1][model]
    n_train, n_eval = r0["n_train"], r0["n_eval"]
    epochs = 1 if model == "eszsl" else EPOCHS
    # evaluation: every pass splits each batch, the ranks together see the set exactly once
    assert len(r0["eval"]) == len(r1["eval"])
    assert sum(r0["eval"]) + sum(r1["eval"]) == epochs * n_eval
    for a, b in zip(r0["eval"], r1["eval"]):
        assert abs(a - b) <= 1 and a + b <= EVAL_BATCH + 1
    assert sum(r0["eval"]) < epochs * n_eval and sum(r1["eval"]) < epochs * n_eval
    if model == "eszsl":  # closed form: every rank fits on the whole training set
        assert r0["train"] == r1["train"] == [(n_train, 1.0)]
        return
    # training: each step's global batch is split, shares weight the ranks' mean losses
    assert len(r0["train"]) == len(r1["train"])
    total = 0
    for (n0, share0), (n1, share1) in zip(r0["train"], r1["train"]):
        assert abs(n0 - n1) <= 1
        assert share0 == pytest.approx(n0 * WORLD / (n0 + n1))
        assert share1 == pytest.approx(n1 * WORLD / (n0 + n1))
        total += n0 + n1
    assert total == epochs * n_train
    assert any(n0 != n1 for (n0, _), (n1, _) in zip(r0["train"], r1["train"]))  # uneven split


@pytest.mark.parametrize("model", DDP_MODELS)
def test_ranks_agree(ranks: list[dict[str, Any]], model: str) -> None:
    """Identical weights, validation histories (so identical selection decisions) and, for
    generative models, identical final classifiers (trained on each rank separately)."""
    r0, r1 = ranks[0][model], ranks[1][model]
    assert r0["history"] == r1["history"]
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:
        assert_same(r0["state"][key], r1["state"][key], key)
    if model in ("clswgan", "cadavae"):
        assert_same(r0["classifier"], r1["classifier"], f"{model} classifier")


@pytest.mark.parametrize("model", EXACT_MODELS)
def test_ddp_fit_equals_single_process(
    ranks: list[dict[str, Any]], single: dict[str, dict[str, Any]], model: str
) -> None:
    ddp, one = ranks[0][model], single[model]
    if model != "eszsl":  # the same global batches, only split
        steps = zip(ddp["train"], ranks[1][model]["train"])
        assert [n for n, _ in one["train"]] == [a + b for (a, _), (b, _) in steps]
    assert_history_close(ddp["history"], one["history"])
    for key, value in one["state"].items():
        torch.testing.assert_close(
            ddp["state"][key], value, rtol=1e-5, atol=1e-6, equal_nan=True, msg=key
        )


def final_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def test_train_py_ddp_equals_single_process(cli_runs: dict[str, dict[str, Any]]) -> None:
    model = "ale"
    one, ddp = cli_runs[f"{model}_cpu"], cli_runs[f"{model}_ddp"]
    assert one["rc"] == 0, explain(one)
    assert ddp["rc"] == 0, explain(ddp)
    # the second process re-ran train.py: same run directory, nothing written twice
    assert ddp["stdout"].count("run directory:") == 1, explain(ddp)
    assert ddp["stdout"].count(f"{model} on SYNTHETIC (test split") == 1, explain(ddp)
    assert "already exists" not in ddp["stderr"]
    assert sorted(p.name for p in ddp["dir"].iterdir()) == sorted(
        p.name for p in one["dir"].iterdir()
    )
    config = (ddp["dir"] / "config.yaml").read_text()
    assert "strategy: ddp" in config and f"devices: {WORLD}" in config

    a, b = final_metrics(ddp["dir"]), final_metrics(one["dir"])
    assert a["selected_params"] == b["selected_params"]
    assert a["selected_epochs"] == b["selected_epochs"]
    for key in PERCENT_KEYS:
        assert abs(a[key] - b[key]) <= 1e-6, (key, a[key], b[key])
    for key in ("gamma", "ausuc"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (key, a[key], b[key])
    assert a["per_class_accuracy"].keys() == b["per_class_accuracy"].keys()
    for name, entry in b["per_class_accuracy"].items():
        acc, other = entry["accuracy"], a["per_class_accuracy"][name]["accuracy"]
        assert (acc is None and other is None) or abs(other - acc) <= 1e-7, name
    sel_a = json.loads((ddp["dir"] / "selection.json").read_text())
    sel_b = json.loads((one["dir"] / "selection.json").read_text())
    assert len(sel_a["trials"]) == len(sel_b["trials"])
    for ta, tb in zip(sel_a["trials"], sel_b["trials"]):
        assert ta["params"] == tb["params"] and ta["epochs"] == tb["epochs"]
        assert_history_close(ta["history"], tb["history"])
