"""The driver lease: two drivers starting at the same instant get one lease between them, on
SQLite and on a real PostgreSQL server; a driver whose study was taken over (``--force``) ends
with one line."""

import contextlib
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy as sa
from postgres_server import postgres_server

from morphnas.errors import StudyError
from morphnas.search.lease import TABLE, DriverLease, LeaseLost
from morphnas.search.study import open_storage

ROUNDS = 20


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lease.db'}"
    else:
        with postgres_server() as server:
            yield server


def _contend(url: str, barrier, results) -> None:
    """One of two drivers: each round, acquire at the barrier, report, and once both have tried
    let the winner either release the lease (next round races to insert it) or leave it to a
    holder long dead (next round races to take it over)."""
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    for round_ in range(ROUNDS):
        lease = DriverLease(study)
        barrier.wait()
        try:
            lease.acquire()
            won = True
        except StudyError:
            won = False
        results.put((round_, os.getpid(), won))
        barrier.wait()  # the winner holds the lease until the other has tried
        if won and round_ % 2:
            with lease.engine.begin() as conn:
                conn.execute(sa.update(TABLE).values(host="elsewhere", renewed=0.0))
        elif won:
            with lease:
                pass


def test_two_drivers_starting_at_the_same_instant_get_one_lease(url):
    optuna.create_study(study_name="s", storage=open_storage(url))
    spawn = multiprocessing.get_context("spawn")  # fresh processes: no engine or thread inherited
    barrier, results = spawn.Barrier(2), spawn.Queue()
    drivers = [spawn.Process(target=_contend, args=(url, barrier, results)) for _ in range(2)]
    for d in drivers:
        d.start()
    got = [results.get(timeout=120) for _ in range(2 * ROUNDS)]
    for d in drivers:
        d.join(timeout=60)
        assert d.exitcode == 0
    winners = [sum(won for r, _, won in got if r == round_) for round_ in range(ROUNDS)]
    assert winners == [1] * ROUNDS


def test_a_renewal_or_release_never_touches_a_lease_taken_over(tmp_path):
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path / 'l.db'}"))
    first, second = DriverLease(study), DriverLease(study)
    first.acquire()
    second.me = {"host": "elsewhere", "pid": 1}
    with pytest.raises(StudyError, match="being run by another driver"):
        second.acquire()
    second.acquire(force=True)
    assert not first._renew()
    with pytest.raises(LeaseLost, match=r"another driver took over study 's' \(pid 1 on elsewhere"):
        with first:
            raise RuntimeError("a trial finished under it")
    assert first.holder()["host"] == "elsewhere"  # the loser's release left the new holder's lease


def _running_children(db) -> int:
    """Trials of generation >= 1 running (read-only: the drivers own the database)."""
    if not db.exists():
        return 0
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return c.execute("SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                         "AND a.key = 'generation' WHERE t.state = 'RUNNING' AND a.value_json != '0'").fetchone()[0]
    return 0


@pytest.mark.slow
def test_a_driver_whose_study_is_taken_over_with_force_ends_with_one_line(tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(json.dumps({
        "name": "tiny", "dataset": {"name": "digits"},
        "seed": {"arch": "cnn", "epochs": 1, "lr": 0.1, "batch_size": 64},
        "rules": {"widen": {"params": {"factor": [1.5]}}, "deepen": {}},
        "finetune": {"epochs": 6, "batch_size": 64}, "final": {"epochs": 1, "batch_size": 64},
        "budget": {"generations": 4, "children": 2},
    }))
    command = [sys.executable, "-c", "from morphnas.cli import app; app()", "search", "--space", str(space),
               "--study", "k", "--workdir", str(tmp_path), "--executor", "local"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None and not _running_children(tmp_path / "morphnas.db"):
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[1][-2000:]
    second = subprocess.Popen([*command, "--resume", "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        _, err = first.communicate(timeout=120)
    finally:
        second.kill()
        second.communicate()
    assert first.returncode == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert f"another driver took over study 'k' (pid {second.pid} on " in err
