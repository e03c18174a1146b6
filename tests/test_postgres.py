"""A search whose study lives on a real PostgreSQL server, through a plain ``postgresql://`` URL."""

import contextlib
import json
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from optuna.trial import TrialState
from postgres_server import PASSWORD, postgres_server
from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.search import load_study, open_storage
from morphnas.search.lease import LEASE_SECONDS, TABLE
from morphnas.search.study import INTERRUPTED, failure_reason

pytestmark = pytest.mark.slow

runner = CliRunner()


@pytest.fixture(scope="module")
def url():
    with postgres_server() as server:
        yield server


def test_search_studies_and_resume_on_postgresql_never_print_the_password(tmp_path, url):
    space = tmp_path / "tiny.yaml"
    space.write_text(json.dumps({
        "name": "tiny", "dataset": {"name": "digits"},
        "seed": {"arch": "cnn", "epochs": 1, "lr": 0.1, "batch_size": 64},
        "rules": {"widen": {"params": {"factor": [1.5, 2.0]}}},
        "finetune": {"epochs": 1, "batch_size": 64}, "final": {"epochs": 1, "batch_size": 64},
        "budget": {"generations": 1, "children": 2},
    }))
    args = ["search", "--space", str(space), "--storage", url, "--study", "pg", "--workdir", str(tmp_path)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert PASSWORD not in result.output and summary["storage"] == url.replace(PASSWORD, "***")
    trials = load_study(open_storage(url), "pg").get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)  # seed, 2 children, final
    listed = runner.invoke(app, ["studies", "list", "--storage", url])
    assert listed.exit_code == 0 and "pg" in listed.output and PASSWORD not in listed.output
    again = runner.invoke(app, [*args, "--resume"])  # a finished study: nothing more to do
    assert again.exit_code == 0, again.output
    assert len(load_study(open_storage(url), "pg").get_trials()) == 4 and PASSWORD not in again.output


def test_a_plain_postgresql_url_opens_through_psycopg_3(url):
    storage = open_storage(url)  # no +driver in the URL: SQLAlchemy >= 2.1 picks psycopg 3, which morphnas requires
    assert url.startswith("postgresql://") and storage.engine.dialect.driver == "psycopg"
    with storage.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1


def driver(tmp_path, url, *args):
    """``morphnas search`` on PostgreSQL in a subprocess: 2 generations x 2 children of 30 epochs (long
    enough that a second driver starts while the first still runs)."""
    space = tmp_path / "slow.yaml"
    space.write_text(json.dumps({
        "name": "slow", "dataset": {"name": "digits"},
        "seed": {"arch": "cnn", "epochs": 2, "lr": 0.1, "batch_size": 64},
        "rules": {"widen": {"params": {"factor": [1.5]}}, "deepen": {}},
        "finetune": {"epochs": 30, "batch_size": 64}, "final": {"epochs": 1, "batch_size": 64},
        "budget": {"generations": 2, "children": 2},
    }))
    command = [sys.executable, "-c", "from morphnas.cli import app; app()", "search", "--space", str(space),
               "--storage", url, "--study", "two", "--workdir", str(tmp_path), "--executor", "local", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(url):
    return {t.number: (t.state, t.values) for t in load_study(open_storage(url), "two").get_trials()
            if t.state.is_finished()}


def test_two_drivers_on_one_postgresql_study_and_a_killed_one_resumed(tmp_path, url):
    first = driver(tmp_path, url)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:  # wait for a child of generation 1 in training
        time.sleep(0.3)
        with contextlib.suppress(Exception):  # the study may not exist yet
            trials = load_study(open_storage(url), "two").get_trials()
            if any(t.state == TrialState.RUNNING and t.user_attrs.get("generation") == 1 for t in trials):
                break
    else:
        raise AssertionError(f"no child was seen running: {first.communicate()[1][-2000:]}")
    second = driver(tmp_path, url, "--resume")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and len(err.strip().splitlines()) == 1 and "being run by another driver" in err
    assert first.poll() is None, "the first driver ended before it could be killed"
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = finished(url)
    engine = sa.create_engine(url)
    # the killed driver as if it had run on another machine: its lease holds until it expires
    with engine.begin() as conn:
        conn.execute(sa.update(TABLE).values(host="elsewhere", renewed=time.time()))
    refused = driver(tmp_path, url, "--resume")
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2 and "pid" in err and "elsewhere" in err
    with engine.begin() as conn:
        conn.execute(sa.update(TABLE).values(renewed=time.time() - LEASE_SECONDS - 1))
    engine.dispose()
    resumed = driver(tmp_path, url, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    trials = load_study(open_storage(url), "two").get_trials()
    for number, (state, values) in before.items():  # nothing finished before the kill was lost or redone
        assert (trials[number].state, trials[number].values) == (state, values)
    done = [t for t in trials if failure_reason(t) != INTERRUPTED and t.user_attrs.get("rule") != "final"]
    assert sorted(t.user_attrs["generation"] for t in done) == [0, 1, 1, 2, 2]  # no generation overfilled
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in done)  # the median pruner may stop one
