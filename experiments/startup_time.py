"""How fast the command line answers before any training: ``train.py --help``, ``--cfg job``,
a config error caught while composing (an unknown key) and one caught by the checks of
values (a negative learning rate), each in a fresh process, ``--repeats`` times; wall time
and CPU seconds (user + system of the child, from ``getrusage``), one thread
(``OMP_NUM_THREADS=1``).

    python experiments/startup_time.py --repeats 5

Writes ``experiments/results/startup_time.md`` and prints it. None of these imports torch or
Lightning; a run pays for them (about 5.5 CPU s) when it starts training.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from zsl.reporting.provenance import cpu_name

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "--help": ["--help"],
    "--cfg job": ["--cfg", "job", "model=eszsl"],
    "config error (unknown key)": ["trainer.max_epoch=3"],
    "config error (value check)": ["model.params.lr=-1"],
}


def timed(args: list[str]) -> tuple[float, float, int]:
    """(wall s, CPU s, exit status) of ``python train.py args`` in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "experiments/results/startup_time.md")
    args = parser.parse_args(argv)
    lines = [
        "# Command-line start-up",
        "",
        f"`python experiments/startup_time.py --repeats {args.repeats}` on "
        f"{cpu_name()} ({os.cpu_count()} cores), Python "
        f"{platform.python_version()}, one thread; median (min-max) over the repeats.",
        "",
        "| command | wall s | CPU s | exit status |",
        "| --- | --- | --- | --- |",
    ]
    for name, extra in COMMANDS.items():
        runs = [timed(extra) for _ in range(args.repeats)]
        walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
        lines.append(
            f"| `train.py {' '.join(extra)}` ({name}) | {statistics.median(walls):.2f} "
            f"({min(walls):.2f}-{max(walls):.2f}) | {statistics.median(cpus):.2f} | "
            f"{runs[0][2]} |"
        )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
