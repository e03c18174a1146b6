"""Start-up time of the ``morphnas`` command against ``python -c pass``, in one run.

Runs each command ``--repeats`` times as a fresh subprocess, the commands taking turns so that
a change in the machine's load touches them all alike, and prints each one's median wall time
and its ratio to ``python -c pass`` (the interpreter's own start-up), with the load average
before and after. Two floors are timed beside the commands: ``import optuna, sqlalchemy.orm``
(under every command that opens a study storage) and ``import torch`` (under every command that
builds a network). ``studies list`` reads a database made here with one study of three trials.
The commands run as the console script does (``from morphnas.cli import app; app()``), with
this interpreter, so ``PYTHONPATH`` selects the morphnas under test.

    .venv/bin/python benchmarks/cli_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONSOLE_SCRIPT = "import sys; from morphnas.cli import app; sys.exit(app(prog_name='morphnas'))"
# the floors under the commands, timed beside them: what any Optuna RDB storage imports (alembic
# comes on top, as the storage opens), and what any command that builds a network imports
STORAGE_FLOOR = "import optuna, sqlalchemy.orm"


def make_workdir(path: Path) -> None:
    """A study database with one study of three trials, for ``studies list``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="bench", storage=f"sqlite:///{path / 'morphnas.db'}")
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=3)


def commands(workdir: Path) -> dict[str, list[str]]:
    morphnas = [sys.executable, "-c", CONSOLE_SCRIPT]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "morphnas --help": [*morphnas, "--help"],
        "import optuna, sqlalchemy.orm": [sys.executable, "-c", STORAGE_FLOOR],
        "morphnas studies list": [*morphnas, "studies", "list", "--workdir", str(workdir)],
        "import torch": [sys.executable, "-c", "import torch"],
        "morphnas arch show resnet20": [*morphnas, "arch", "show", "resnet20"],
    }


def wall_seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="Runs of each command (the median is shown).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_workdir(Path(tmp))
        runs = commands(Path(tmp))
        for argv in runs.values():  # warm the file cache once, untimed
            wall_seconds(argv)
        load_before = os.getloadavg()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, argv in runs.items():
                times[name].append(wall_seconds(argv))
        load_after = os.getloadavg()
    base = statistics.median(times["python -c pass"])
    print(f"{'command':30s} {'median s':>9s} {'min s':>7s} {'x python':>9s}   ({args.repeats} runs each)")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:30s} {median:9.3f} {min(seconds):7.3f} {median / base:9.1f}")
    print("load average (1, 5, 15 min): before " + ", ".join(f"{x:.2f}" for x in load_before)
          + "; after " + ", ".join(f"{x:.2f}" for x in load_after) + f"; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
