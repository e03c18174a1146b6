"""Chaos soak: SIGKILL a search at random moments, resume it each time, and count what was lost.

A search on ``digits`` (cnn seed, successive halving, children side by side in worker processes:
``--executor processes``) is started, SIGKILLed with its whole process group after a random
delay, and continued with ``morphnas search --study S --resume`` alone (plus ``--storage`` when
given), ``--kills`` times; then it is resumed once more and left to finish. At the end it prints:

- ``lost``: trials whose training finished but whose result the study does not hold (a
  checkpoint folder on disk for a trial that is not COMPLETE or PRUNED), and COMPLETE trials
  whose checkpoint is missing;
- ``duplicated``: children that repeat another child's (parent, morph descriptor);
- ``running``: trials left RUNNING after the last resume;
- ``short generations``: generations with fewer finished children than the space asks for, and
  and of those the ones the budget did not shorten (it says so in a ``time budget: generation N
  shortened`` line): a slot lost to a kill would show there;
- ``budget``: the search's own count of its time (``seconds_spent``) against ``--budget``,
  and whether it ended within 5 % of it.

    .venv/bin/python benchmarks/kill_resume_soak.py --kills 20
    .venv/bin/python benchmarks/kill_resume_soak.py --kills 5 --storage postgresql://USER@HOST/DB

Every kill leaves the machine as a real crash does (no clean-up runs), so a run takes a few
minutes; the figures go in the closing note of the issue that asked for them, with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from optuna.trial import TrialState

from morphnas.search.record import TrialRecord
from morphnas.search.study import load_study, open_storage

SPACE = {
    "name": "soak",
    "dataset": {"name": "digits"},
    "seed": {"arch": "cnn", "epochs": 4, "lr": 0.1, "batch_size": 64},
    "rules": {"widen": {"params": {"factor": [1.5, 2.0]}}, "deepen": {}, "insert_pact": {}, "branch": {}},
    "finetune": {"schedule": "lineage", "epochs": 1, "halving": 2, "batch_size": 64},
    "final": {"epochs": 50, "batch_size": 64},
    "budget": {"generations": 200, "children": 4, "seed_share": 0.2, "final_share": 0.2},
}


def search(workdir: Path, study: str, storage: str | None, budget: float, resume: bool) -> subprocess.Popen:
    """``morphnas search`` in its own process group (so a kill takes its workers too)."""
    space = workdir / "soak.yaml"
    space.write_text(json.dumps(SPACE))  # JSON is YAML
    command = [sys.executable, "-c", "from morphnas.cli import app; app()", "search", "--study", study,
               "--workdir", str(workdir)]
    command += ["--resume"] if resume else ["--space", str(space), "--executor", "processes",
                                              "--time-budget", f"{budget:g}"]
    if storage:
        command += ["--storage", storage]
    with (workdir / "log").open("a") as log:  # every driver's lines, the `time budget:` ones read at the end
        return subprocess.Popen(command, stdout=log, stderr=subprocess.PIPE, text=True, start_new_session=True)


def report(workdir: Path, study_name: str, storage: str, budget: float) -> dict:
    study = load_study(open_storage(storage), study_name)
    trials = study.get_trials(deepcopy=False)
    folder = workdir / "studies" / study_name / "trials"
    on_disk = {int(p.name) for p in folder.iterdir() if p.name.isdigit()} if folder.is_dir() else set()
    kept = {t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    lost = sorted((on_disk - kept) | {t.number for t in trials if t.state == TrialState.COMPLETE
                                      and t.number not in on_disk})
    records = [TrialRecord.from_trial(t) for t in trials]
    pairs = Counter((r.parent, json.dumps(r.descriptor, sort_keys=True)) for r in records if r.descriptor and r.history)
    done = Counter(r.generation for r in records if r.state in ("COMPLETE", "PRUNED") and r.history
                   and r.rule not in ("seed", "final"))
    last = max(done, default=0)
    shortened = {int(g) for g in re.findall(r"time budget: generation (\d+) shortened", (workdir / "log").read_text())}
    spent = float(study.user_attrs.get("seconds_spent", 0.0))
    return {
        "trials": len(trials),
        "lost": lost,
        "duplicated": sum(n - 1 for n in pairs.values() if n > 1),
        "running": [t.number for t in trials if t.state == TrialState.RUNNING],
        # generation: its finished children, for those with fewer than the space asks for; the
        # budget may shorten a generation (fewer children when the time left is short), a lost
        # slot would show here too
        "short generations": {g: n for g, n in sorted(done.items()) if n < SPACE["budget"]["children"]},
        "short, not by the budget": sorted(g for g, n in done.items()
                                           if n < SPACE["budget"]["children"] and g not in shortened),
        "generations": last,
        "final": any(r.rule == "final" and r.state == "COMPLETE" for r in records),
        "seconds spent": round(spent, 1),
        "budget kept": spent <= budget * 1.05,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--budget", type=float, default=300.0,
                        help="the search's time budget, seconds (killed time does not count: make room for the kills)")
    parser.add_argument("--storage", help="an SQLAlchemy URL (default: SQLite in a temporary work directory)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--min-wait", type=float, default=3.0, help="seconds before a kill, at least")
    parser.add_argument("--max-wait", type=float, default=15.0, help="seconds before a kill, at most")
    args = parser.parse_args()
    moments = random.Random(args.seed)
    study = f"soak-{os.getpid()}-{int(time.time())}"
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        storage = args.storage or f"sqlite:///{workdir / 'morphnas.db'}"
        kills = 0
        while kills < args.kills:
            proc = search(workdir, study, args.storage, args.budget, resume=kills > 0)
            try:
                proc.wait(timeout=moments.uniform(args.min_wait, args.max_wait))
                break  # the search ended before this kill: the budget was spent
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                proc.stderr.close()
                kills += 1
        else:
            proc = search(workdir, study, args.storage, args.budget, resume=True)
            proc.wait()
        err = proc.stderr.read()
        if proc.returncode != 0:
            raise SystemExit(f"the search failed after {kills} kills (exit {proc.returncode}): {err.strip()[-500:]}")
        figures = report(workdir, study, storage, args.budget)
    print(json.dumps({"kills": kills, "storage": "postgresql" if args.storage else "sqlite",
                      "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2), **figures}))


if __name__ == "__main__":
    main()
