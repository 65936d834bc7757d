"""The authors' CADA-VAE code and ``zsl``'s CADA-VAE, side by side on CPU, one thread each.

Runs, at the same time, each pinned to its own core with one OpenMP/BLAS thread:

* the official implementation (a checkout of github.com/edgarschnfld/CADA-VAE-PyTorch, given
  with ``--official``): its CUB configuration (hidden 1560/1660 and 1450/665, latent 64,
  batch 50, Adam 1.5e-4 with AMSGrad, the warm-up schedule, 200 latents per seen and 400 per
  unseen class), ``--epochs`` VAE epochs on trainval, then its latent softmax classifier for
  ``--cls-epochs`` epochs. No hyper-parameter search; the script reports the test split after
  every classifier epoch and keeps the last;
* ``zsl``'s default CADA-VAE run: the whole protocol (a 6-point grid selected on validation
  classes with early stopping, the trainval fit, one test evaluation).

The checkout is written for CUDA and for 2048-d ResNet features. It runs unchanged here: the
child process maps its ``torch.cuda`` tensor constructors and ``.cuda()`` to the CPU and builds
its feature encoder and decoder for the dimension of ``--feature-file`` where the code assumes
2048. Its data folder (``data/<NAME>/res101.mat`` and ``att_splits.mat``) is a temporary
folder of links to the xlsa17 files.

    python experiments/cadavae_reference.py --official <checkout> \\
        --root ../shared/data/xlsa17 --feature-file vgg_fc7.mat

Writes ``experiments/results/<name>.md`` and ``.json`` (default ``cadavae_reference``): CPU
seconds of each process (user + system, ``getrusage`` of the child, start-up included), CPU
seconds per VAE epoch of the official code, and each side's GZSL u, s, H.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "experiments" / "results"
#: the authors' CUB settings (their ``single_experiment.py``), written out as data here
OFFICIAL_CUB = {
    "hidden": {"resnet_features": (1560, 1660), "attributes": (1450, 665)},
    "latent_size": 64,
    "batch_size": 50,
    "lr_gen_model": 0.00015,
    "lr_cls": 0.001,
    "warmup": {
        "beta": {"factor": 0.25, "end_epoch": 93, "start_epoch": 0},
        "cross_reconstruction": {"factor": 2.37, "end_epoch": 75, "start_epoch": 21},
        "distance": {"factor": 8.13, "end_epoch": 22, "start_epoch": 6},
    },
    # latents per class: seen from images, seen from attributes, unseen from attributes,
    # unseen from images (generalised zero-shot, no shots)
    "samples_per_class": (200, 0, 400, 0),
}
#: the authors' classifier epochs for CUB, generalised, zero-shot (chosen on their validation)
OFFICIAL_CUB_CLS_EPOCHS = 23


def official_child(args: argparse.Namespace) -> None:
    """Run the checkout's VAE and classifier in this process on the CPU; print one JSON line."""
    import scipy.io as sio
    import torch

    torch.set_num_threads(1)
    name = args.data.upper()
    work = Path(tempfile.mkdtemp(prefix="cadavae_reference_"))
    data = work / "data" / name
    data.mkdir(parents=True)
    (data / "res101.mat").symlink_to(Path(args.root).resolve() / name / args.feature_file)
    (data / "att_splits.mat").symlink_to(Path(args.root).resolve() / name / "att_splits.mat")
    features = sio.loadmat(str(data / "res101.mat"), variable_names=["features"])["features"]
    feature_dim = int(features.shape[0])
    del features

    # the CPU in place of CUDA, for code written with torch.cuda constructors and .cuda()
    torch.cuda.FloatTensor = torch.FloatTensor  # type: ignore[misc,assignment]
    torch.cuda.LongTensor = torch.LongTensor  # type: ignore[misc,assignment]
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    sys.path.insert(0, str(Path(args.official).resolve() / "model"))
    os.chdir(work)
    import data_loader  # the checkout's modules
    import models
    import vaemodel

    # current PyTorch sizes a shuffled DataLoader when it is built (the code builds one and
    # draws its batches with the loader's own next_batch)
    data_loader.DATA_LOADER.__len__ = lambda self: int(self.ntrain)

    def sized(builder: Any, position: int) -> Any:
        # the code builds the image VAE for 2048-d features; give it the file's dimension
        def build(*a: Any) -> Any:
            a = tuple(feature_dim if i == position and v == 2048 else v for i, v in enumerate(a))
            return builder(*a)

        return build

    # the model module sees these builders; the checkout's own classes stay as they are
    vaemodel.models = types.SimpleNamespace(
        encoder_template=sized(models.encoder_template, 0),
        decoder_template=sized(models.decoder_template, 1),
        weights_init=models.weights_init,
    )

    hyperparameters = {
        "num_shots": 0,
        "device": "cpu",
        "model_specifics": {
            "cross_reconstruction": True,
            "name": "CADA",
            "distance": "wasserstein",
            "warmup": OFFICIAL_CUB["warmup"],
        },
        "lr_gen_model": OFFICIAL_CUB["lr_gen_model"],
        "generalized": True,
        "batch_size": OFFICIAL_CUB["batch_size"],
        "samples_per_class": {name: OFFICIAL_CUB["samples_per_class"]},
        "epochs": args.epochs,
        "loss": "l1",
        "auxiliary_data_source": "attributes",
        "lr_cls": OFFICIAL_CUB["lr_cls"],
        "dataset": name,
        "hidden_size_rule": {
            "resnet_features": OFFICIAL_CUB["hidden"]["resnet_features"],
            "attributes": OFFICIAL_CUB["hidden"]["attributes"],
        },
        "latent_size": OFFICIAL_CUB["latent_size"],
        "cls_train_steps": args.cls_epochs,
    }
    torch.manual_seed(args.seed)
    start = time.process_time()
    model = vaemodel.Model(hyperparameters)
    vae_start = time.process_time()
    model.train_vae()
    vae_end = time.process_time()
    seen, unseen, harmonic, _ = model.train_classifier()
    end = time.process_time()
    print(
        json.dumps(
            {
                "feature_dim": feature_dim,
                "setup_cpu_s": vae_start - start,
                "vae_cpu_s": vae_end - vae_start,
                "vae_epoch_cpu_s": (vae_end - vae_start) / args.epochs,
                "classifier_cpu_s": end - vae_end,
                "gzsl_s": 100.0 * seen,
                "gzsl_u": 100.0 * unseen,
                "gzsl_h": 100.0 * harmonic,
            }
        )
    )


def launch(command: list[str], core: int | None, log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` with one OpenMP/BLAS thread, pinned to ``core`` where given."""
    one = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    env = {**os.environ, **dict.fromkeys(one, "1")}

    def pin() -> None:
        if core is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {core})

    handle = log.open("wb")
    return subprocess.Popen(
        command, env=env, stdout=handle, stderr=subprocess.STDOUT, preexec_fn=pin
    )


def wait(process: subprocess.Popen[bytes], what: str, log: Path) -> dict[str, float]:
    """Wait for ``process``: its wall time is measured by the caller; CPU seconds from wait4."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        status = process.returncode
        raise RuntimeError(f"{what} failed with exit status {status}: {' | '.join(tail)}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", help="checkout of edgarschnfld/CADA-VAE-PyTorch")
    parser.add_argument("--root", default="data/xlsa17", help="xlsa17 data root")
    parser.add_argument("--data", default="cub", help="data config name (CUB only is set up)")
    parser.add_argument("--feature-file", default="res101.mat")
    parser.add_argument("--epochs", type=int, default=100, help="official VAE epochs (theirs: 100)")
    parser.add_argument("--cls-epochs", type=int, default=OFFICIAL_CUB_CLS_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cores", default="0,1", help="the two cores: official, zsl")
    parser.add_argument("--name", default="cadavae_reference")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.official is None:
        parser.error("--official <checkout of edgarschnfld/CADA-VAE-PyTorch> is required")
    if args.child:
        official_child(args)
        return
    if not (Path(args.official) / "model" / "vaemodel.py").is_file():
        parser.error(f"--official {args.official}: no model/vaemodel.py there")
    cores = [int(c) for c in args.cores.split(",")]
    if len(cores) != 2:
        parser.error(f"--cores takes two cores, got {args.cores!r}")
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        out = logs / "zsl_run"
        official_cmd = [sys.executable, __file__, "--child", *(argv or sys.argv[1:])]
        zsl_cmd = [
            sys.executable,
            str(REPO / "train.py"),
            f"data={args.data}",
            f"data.root={Path(args.root).resolve()}",
            f"data.feature_file={args.feature_file}",
            "model=cadavae",
            f"seed={args.seed}",
            "logger=csv",
            f"output_dir={out}",
            "trainer.enable_progress_bar=false",
        ]
        start = time.perf_counter()
        official = launch(official_cmd, cores[0], logs / "official.log")
        zsl = launch(zsl_cmd, cores[1], logs / "zsl.log")
        zsl_row = wait(zsl, "zsl's CADA-VAE", logs / "zsl.log")
        zsl_row["wall_s"] = time.perf_counter() - start
        official_row = wait(official, "the official CADA-VAE", logs / "official.log")
        official_row["wall_s"] = time.perf_counter() - start
        lines = (logs / "official.log").read_text(errors="replace").strip().splitlines()
        official_row.update(json.loads(lines[-1]))
        metrics = json.loads((out / "metrics.json").read_text())
    zsl_row.update(
        run_cpu_s=float(metrics["cpu_time_s"]),
        gzsl_u=float(metrics["gzsl_u"]),
        gzsl_s=float(metrics["gzsl_s"]),
        gzsl_h=float(metrics["gzsl_h"]),
        gzsl_h_cal=float(metrics["gzsl_h_cal"]),
        zsl_t1=float(metrics["zsl_t1"]),
        selected_epochs=float(metrics["selected_epochs"]),
    )
    report(args, official_row, zsl_row)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux; else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.partition(":")[2].split())
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def report(args: argparse.Namespace, official: dict[str, Any], zsl: dict[str, Any]) -> None:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores"
    record = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}}
    record.update(official=official, zsl=zsl)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(record, indent=2))
    ratio = official["cpu_s"] / zsl["cpu_s"]
    command = (
        f"python experiments/cadavae_reference.py --official <checkout> --root {args.root} "
        f"--feature-file {args.feature_file} --epochs {args.epochs}"
    )
    rows = [
        ("", "official code", "`zsl`"),
        (
            "what runs",
            f"{args.epochs} VAE epochs on trainval, classifier {args.cls_epochs} epochs",
            "6-point grid on validation classes, trainval fit, one test",
        ),
        ("CPU s", f"{official['cpu_s']:.0f}", f"{zsl['cpu_s']:.0f} (run: {zsl['run_cpu_s']:.0f})"),
        ("VAE CPU s per epoch", f"{official['vae_epoch_cpu_s']:.1f}", "-"),
        (
            "GZSL u / s / H",
            "{gzsl_u:.1f} / {gzsl_s:.1f} / {gzsl_h:.2f}".format(**official),
            "{gzsl_u:.1f} / {gzsl_s:.1f} / {gzsl_h:.2f}".format(**zsl)
            + " (calibrated {gzsl_h_cal:.1f})".format(**zsl),
        ),
    ]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    table = "\n".join([lines[0], "| --- | --- | --- |", *lines[1:]])
    text = f"""# CADA-VAE: the authors' code and `zsl`, side by side (CPU, one thread each)

`{command}`

Both processes ran at the same time, each pinned to its own core with one thread ({machine}).
CPU s are the whole process's (user + system, start-up and data loading included).

{table}

The official run costs {ratio:.1f}x `zsl`'s whole protocol. Its feature encoder/decoder were
built for the {official["feature_dim"]}-d features of `{args.feature_file}` (the code assumes
2048-d ResNet features). The official script evaluates the test split after each classifier
epoch and reports the last; `zsl` evaluates it once, after selection on validation classes.
"""
    (args.out_dir / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
