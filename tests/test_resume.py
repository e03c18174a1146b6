"""A search SIGKILLed (a real subprocess) and resumed repeats no child and loses no finished one."""

import contextlib
import json
import sqlite3
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from test_search import HALVING, start_cli_search, study_trials

from morphnas.search.study import INTERRUPTED, failure_reason

pytestmark = pytest.mark.slow


def poll(db: Path) -> dict[int, tuple[str, set[str]]]:
    """Each trial's state and the names of its user attributes, read-only (see ``poll_trials``)."""
    if not db.exists():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            rows = con.execute("SELECT t.number, t.state, a.key FROM trials t LEFT JOIN trial_user_attributes a "
                               "ON a.trial_id = t.trial_id").fetchall()
    except sqlite3.Error:
        return {}
    trials: dict[int, tuple[str, set[str]]] = {}
    for number, state, key in rows:
        trials.setdefault(number, (state, set()))[1].add(key)
    return trials


def kill_when(proc, tmp_path, finished) -> None:
    """SIGKILL the search once ``finished(trials)`` holds for what :func:`poll` reads."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if finished(poll(tmp_path / "w" / "morphnas.db")):
            proc.kill()
            proc.wait(timeout=60)
            return
    raise AssertionError(f"the search ended before it could be killed: {proc.communicate()[1][-2000:]}")


def resume(tmp_path) -> list:
    proc = start_cli_search(tmp_path, "--resume")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return study_trials(tmp_path)


def trained_children(trials) -> list:
    return [t for t in trials if "descriptor" in t.user_attrs and "history" in t.user_attrs]


def assert_nothing_repeated_and_no_stale_checkpoint(tmp_path, trials) -> None:
    pairs = [(t.user_attrs["parent"], json.dumps(t.user_attrs["descriptor"], sort_keys=True))
             for t in trained_children(trials)]
    assert len(pairs) == len(set(pairs)), "a child repeats its parent and descriptor"
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    for t in trials:
        if failure_reason(t) == INTERRUPTED:
            assert not (tmp_path / "w" / "studies" / "k" / "trials" / f"{t.number:05d}").exists()


def test_a_resumed_search_proposes_no_child_it_already_trained(tmp_path):
    # killed as the first child finished: the resumed sampler must not begin its stream again
    proc = start_cli_search(tmp_path, "--generations", "2", "--children", "2", "--epochs", "3")
    kill_when(proc, tmp_path, lambda trials: trials.get(1, ("",))[0] == "COMPLETE" and 2 in trials)
    first = study_trials(tmp_path)[1]
    trials = resume(tmp_path)
    assert (trials[1].state, trials[1].values, trials[1].user_attrs) == (first.state, first.values, first.user_attrs)
    assert len(trained_children(trials)) >= 4
    assert_nothing_repeated_and_no_stale_checkpoint(tmp_path, trials)


def test_a_child_that_finished_a_rung_is_completed_by_the_resume_not_retrained(tmp_path):
    # successive halving over 4 children: killed while the second trains its first rung, the
    # first's rung result is recorded on its still RUNNING trial
    proc = start_cli_search(tmp_path, "--generations", "1", "--children", "4", finetune=HALVING)
    kill_when(proc, tmp_path, lambda trials: "rung" in trials.get(1, ("", set()))[1] and 2 in trials)
    killed = study_trials(tmp_path)
    assert killed[1].state == TrialState.RUNNING and killed[1].user_attrs["rung"] == 1
    trials = resume(tmp_path)
    child = trials[1]
    assert child.state == TrialState.COMPLETE and child.values == [killed[1].user_attrs["val_error"]]
    assert child.user_attrs["history"] == killed[1].user_attrs["history"] and len(child.user_attrs["history"]) == 1
    assert (tmp_path / "w" / child.user_attrs["checkpoint"]).is_dir()
    assert failure_reason(trials[2]) == INTERRUPTED  # killed while training
    generation = [t for t in trials if t.user_attrs.get("generation") == 1 and failure_reason(t) != INTERRUPTED]
    assert len(generation) == 4 and child in generation  # the slot counts as done: 3 more children, not 4
    assert_nothing_repeated_and_no_stale_checkpoint(tmp_path, trials)
