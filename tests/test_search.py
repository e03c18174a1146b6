"""End-to-end searches on real data (sklearn digits), a real SQLite study and real executors."""

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.cli.search import make_executor
from morphnas.errors import SearchInterrupted
from morphnas.execute import LocalExecutor
from morphnas.grammar.space import Overrides, parse_space
from morphnas.ir import ArchGraph, compile_graph
from morphnas.search import (
    ParentSelector,
    Search,
    SearchOptions,
    load_study,
    open_storage,
    run_search,
    trial_checkpoint,
    trials_frame,
)
from morphnas.search.record import TRIAL_SCHEMA, TrialRecord
from morphnas.search.study import INTERRUPTED, failure_reason
from morphnas.train import evaluate, load_checkpoint, load_dataset

pytestmark = pytest.mark.slow


def tiny_space(**overrides) -> dict:
    space = {
        "name": "tiny",
        "dataset": {"name": "digits"},
        "seed": {"arch": "cnn", "epochs": 3, "lr": 0.1, "batch_size": 64},
        "rules": {"widen": {"params": {"factor": [1.5, 2.0]}}, "deepen": {}, "insert_pact": {}},
        "finetune": {"lr": {"low": 0.01, "high": 0.05, "log": True}, "epochs": {"low": 1, "high": 1, "int": True},
                     "batch_size": 64},
        "final": {"lr": 0.02, "epochs": 1, "batch_size": 64},
        "budget": {"generations": 2, "children": 2},
    }
    space.update(overrides)
    return space


def search(tmp_path, executor="local", options=None, on_event=None, **overrides):
    with make_executor(executor, cpus_per_child=1) as runner:
        options = SearchOptions(space=parse_space(tiny_space(**overrides)), workdir=tmp_path, study="t",
                                executor=runner, seed=3, **(options or {}))
        return run_search(options, on_event)


def test_local_search_records_lineage_and_best_checkpoint_reproduces(tmp_path):
    summary = search(tmp_path)
    study = load_study(open_storage(summary.storage), "t")
    trials = study.get_trials()
    assert summary.n_trials == len(trials) == 6  # seed + 2 generations x 2 children + the final phase
    assert study.user_attrs["trial_schema"] == TRIAL_SCHEMA
    for t in trials:  # every attribute the search writes is a field of the record, read back as written
        assert TrialRecord.from_trial(t).to_attrs(*t.user_attrs) == t.user_attrs
    assert trials[0].user_attrs["generation"] == 0 and trials[0].user_attrs["parent"] is None
    for t in trials[1:-1]:
        assert t.user_attrs["parent"] < t.number
        assert t.user_attrs["morphs"] and t.user_attrs["generation"] in (1, 2)
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["preservation_error"] < 1e-4
    assert summary.lineage[0] == 0 and summary.lineage[-1] == summary.best_trial
    best = study.trials[summary.best_trial]
    arch, weights, metrics = load_checkpoint(trial_checkpoint(study, best))
    model = compile_graph(ArchGraph.from_json(arch), weights)
    data = load_dataset("digits")
    assert evaluate(model, data.val) == pytest.approx(best.values[0], abs=1e-9)
    frame = trials_frame(study)
    assert list(frame["number"]) == [0, 1, 2, 3, 4, 5]
    assert frame.loc[summary.best_trial, "test_error"] == pytest.approx(summary.test_error)


def test_final_phase_trains_the_lowest_validation_loss_on(tmp_path):
    summary = search(tmp_path, final={"lr": 0.02, "epochs": 2, "batch_size": 64})
    study = load_study(open_storage(summary.storage), "t")
    *others, final = study.get_trials()
    chosen = min((t for t in others if t.state == TrialState.COMPLETE),
                 key=lambda t: (t.user_attrs["val_loss"], t.number))
    assert final.user_attrs["rule"] == "final" and final.user_attrs["parent"] == chosen.number
    assert final.user_attrs["generation"] == chosen.user_attrs["generation"] + 1
    assert len(final.user_attrs["history"]) == 2
    assert summary.best_trial == final.number and summary.lineage[-2:] == [chosen.number, final.number]
    # it trained on from the chosen network's weights: its first epoch starts from them
    _, parent_weights, _ = load_checkpoint(trial_checkpoint(study, chosen))
    _, final_weights, _ = load_checkpoint(trial_checkpoint(study, final))
    assert parent_weights.keys() == final_weights.keys()
    assert summary.seed_test_error == study.user_attrs["test_error/0"]


HALVING = {"lr": {"low": 0.01, "high": 0.05, "log": True}, "epochs": 1, "halving": 2, "batch_size": 64}


def test_successive_halving_trains_the_best_half_on_until_one_is_left(tmp_path):
    summary = search(tmp_path, finetune=HALVING, budget={"generations": 1, "children": 4},
                     selection={"metric": "error"})  # ranks by the reported values
    study = load_study(open_storage(summary.storage), "t")
    seed, *children, final = study.get_trials()
    assert sorted(len(t.user_attrs["history"]) for t in children) == [1, 1, 1 + 2, 1 + 2 + 4]
    # every rung's epochs count, not only the last one's (the benchmark adds them up along a lineage)
    assert sorted(t.user_attrs["epochs"] for t in children) == [1, 1, 1 + 2, 1 + 2 + 4]
    winner = next(t for t in children if t.state == TrialState.COMPLETE)
    assert [t.state for t in children].count(TrialState.PRUNED) == 3
    assert len(winner.user_attrs["history"]) == 7 and sorted(winner.intermediate_values) == list(range(1, 8))
    for step in (1, 3):  # the end of rungs 1 and 2: who went on was never worse than who stopped there
        went_on = [t.intermediate_values[step] for t in children if len(t.user_attrs["history"]) > step]
        stopped = [t.intermediate_values[step] for t in children if len(t.user_attrs["history"]) == step]
        assert len(went_on) == {1: 2, 3: 1}[step] and max(went_on) <= min(stopped)
    for t in children:
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["reason"].startswith("halved out after rung") and t.user_attrs["val_loss"] > 0
    assert final.user_attrs["parent"] in (seed.number, winner.number)
    # the winner's checkpoint is its network after all its rungs
    arch, weights, _ = load_checkpoint(trial_checkpoint(study, winner))
    model = compile_graph(ArchGraph.from_json(arch), weights)
    assert evaluate(model, load_dataset("digits").val) == pytest.approx(winner.values[0], abs=1e-9)


def test_with_the_lineage_schedule_seed_rungs_and_final_phase_make_one_cycle(tmp_path):
    class Recording(LocalExecutor):
        def run(self, jobs, on_epoch=None):
            runs.extend((job.key, job.train.lr, job.train.cycle) for job in jobs)
            return super().run(jobs, on_epoch)

    runs: list[tuple[int, float, tuple[float, float]]] = []
    options = SearchOptions(space=parse_space(tiny_space(finetune={**HALVING, "schedule": "lineage"})),
                            workdir=tmp_path, study="t", executor=Recording(cpus_per_child=1), seed=3)
    summary = run_search(options)
    study = load_study(open_storage(summary.storage), "t")
    # no time budget: the seed takes the cycle to 0.25, generations 1 and 2 start at 0.25 and
    # 0.45 (the generations share 0.25 .. 0.65), every rung holds its generation's rate, and the
    # final phase anneals from 0.65 to the end; every run's peak is the seed's rate
    seed, *rungs, final = runs
    assert seed == (0, 0.1, (0.0, 0.25)) and final == (summary.best_trial, 0.1, (0.65, 1.0))
    positions = {study.trials[key].user_attrs["generation"]: cycle for key, _, cycle in rungs}
    assert positions == {1: (0.25, 0.25), 2: pytest.approx((0.45, 0.45))}
    assert len(rungs) == 2 * (2 + 1) and {lr for _, lr, _ in rungs} == {0.1}
    assert all("finetune.lr" not in t.params for t in study.trials)  # nothing to sample: the lineage sets it
    # the lineage goes forward: parents are the tips of the generation before, the final phase trains a tip
    tips = {g: {t.number for t in study.trials if t.user_attrs["generation"] == g and t.state == TrialState.COMPLETE
                and t.user_attrs["rule"] != "final"} for g in (0, 1, 2)}
    for t in study.trials:
        g = t.user_attrs["generation"]
        if t.user_attrs["rule"] != "final" and g > 0:
            assert t.user_attrs["parent"] in tips[g - 1]
    assert study.trials[summary.best_trial].user_attrs["parent"] in tips[2]


class SeedOnly(ParentSelector):  # a new policy is one class and no other edit; its name registers it
    name = "seed_only"
    offered: list[list[int]] = []  # the trials each call was given

    def select(self, trials, slots, score, pareto):
        SeedOnly.offered.append([t.number for t in trials])
        return [t for t in trials if t.number == 0] * slots


def test_the_selector_and_pruner_the_space_names_are_the_studys_and_a_resume_keeps_them(tmp_path):
    finetune = {**tiny_space()["finetune"], "pruner": "none"}
    space = parse_space(tiny_space(selection={"selector": "seed_only"}, finetune=finetune, final=None,
                                   budget={"generations": 1, "children": 2}))
    first = Search(SearchOptions(space=space, workdir=tmp_path, study="t", seed=3))
    assert isinstance(first.selector, SeedOnly) and isinstance(first.study.pruner, optuna.pruners.NopPruner)
    first.run()
    SeedOnly.offered.clear()
    # resumed with the default space passed (ignored: the study keeps its own) and one more generation
    resumed = Search(SearchOptions(space=parse_space(tiny_space()), workdir=tmp_path, study="t", seed=3, resume=True,
                                   overrides=Overrides(generations=2)))
    assert isinstance(resumed.selector, SeedOnly) and isinstance(resumed.study.pruner, optuna.pruners.NopPruner)
    resumed.run()
    study = load_study(open_storage(resumed.storage_url), "t")
    records = [TrialRecord.from_trial(t) for t in study.trials]
    assert [(r.generation, r.parent) for r in records] == [(0, None), (1, 0), (1, 0), (2, 0), (2, 0)]
    # generation 2's selector was offered only what may parent: completed trials with a checkpoint
    assert SeedOnly.offered == [[r.number for r in records[:3] if r.state == "COMPLETE" and r.checkpoint]]


def test_a_control_child_trains_its_parent_on_unmorphed_once_per_generation(tmp_path):
    summary = search(tmp_path, finetune={**HALVING, "schedule": "lineage"}, budget={"generations": 2, "children": 3},
                     selection={"control": True})
    study = load_study(open_storage(summary.storage), "t")
    *children, final = study.get_trials()[1:]
    for generation in (1, 2):
        siblings = [t for t in children if t.user_attrs["generation"] == generation]
        controls = [t for t in siblings if t.user_attrs["rule"] == "control"]
        assert len(siblings) == 3 and len(controls) == 1
        control, parent = controls[0], study.trials[controls[0].user_attrs["parent"]]
        assert control.number == min(t.number for t in siblings)  # the first slot
        assert control.user_attrs["morphs"] == [] and not control.params  # nothing sampled, nothing morphed
        assert (control.user_attrs["params"], control.user_attrs["macs"]) == (parent.user_attrs["params"],
                                                                            parent.user_attrs["macs"])
        morphed = [t for t in siblings if t is not control]
        assert all(t.user_attrs["morphs"] and t.user_attrs["preservation_error"] < 1e-4 for t in morphed)
    # the control's network is its parent's weights trained on: same architecture, other values
    control = next(t for t in children if t.user_attrs["rule"] == "control" and t.state == TrialState.COMPLETE)
    arch, weights, _ = load_checkpoint(trial_checkpoint(study, control))
    parent = study.trials[control.user_attrs["parent"]]
    parent_arch, parent_weights, _ = load_checkpoint(trial_checkpoint(study, parent))
    assert arch == parent_arch and weights.keys() == parent_weights.keys()
    assert any(not (weights[k] == parent_weights[k]).all() for k in weights)
    assert final.user_attrs["rule"] == "final"


def test_halving_needs_one_number_of_epochs():
    with pytest.raises(Exception, match="with halving, epochs must be one number"):
        parse_space(tiny_space(finetune={**HALVING, "epochs": {"low": 1, "high": 2, "int": True}}))


def test_selection_on_error_ranks_by_validation_error(tmp_path):
    summary = search(tmp_path, selection={"parents": 1, "metric": "error"})
    study = load_study(open_storage(summary.storage), "t")
    *others, final = study.get_trials()
    chosen = min((t for t in others if t.state == TrialState.COMPLETE), key=lambda t: (t.values[0], t.number))
    assert final.user_attrs["parent"] == chosen.number


def test_without_inheritance_children_start_from_fresh_weights(tmp_path):
    summary = search(tmp_path, options={"inherit": False, "sampler": optuna.samplers.RandomSampler(seed=0)},
                     budget={"generations": 1, "children": 2})
    study = load_study(open_storage(summary.storage), "t")
    children = study.trials[1:]
    assert all(t.user_attrs["inherit"] is False and "preservation_error" not in t.user_attrs for t in children)
    assert summary.best_trial == children[-1].number  # the final phase ran, from fresh weights too


@pytest.mark.slow
def test_time_budgeted_search_on_digits_ends_within_five_percent(tmp_path):
    budget = 30.0
    started = time.monotonic()
    events = []
    summary = search(tmp_path, seed={"arch": "cnn", "epochs": 1000, "lr": 0.1, "batch_size": 64},
                     final={"lr": 0.05, "epochs": 1000, "batch_size": 64},
                     budget={"generations": 100, "children": 2, "time_budget": budget},
                     on_event=lambda kind, info: events.append((kind, info)))
    wall = time.monotonic() - started
    study = load_study(open_storage(summary.storage), "t")
    assert 0.95 * budget <= summary.seconds <= 1.05 * budget, summary.seconds
    assert wall <= 1.05 * budget + 5  # + opening the study and loading digits, before the clock starts
    seed, final = study.trials[0], study.trials[summary.best_trial]
    assert len(seed.user_attrs["history"]) > 3 and final.user_attrs["rule"] == "final"
    assert summary.test_error < 0.1
    # the budget, not the 1000 epochs asked for, decides how many the seed and final phase train:
    # their epoch events leave the count out, a child's (its rung's) keep it
    counts = {info["trial"]: info["epochs"] for kind, info in events if kind == "epoch"}
    assert counts[0] is None and counts[summary.best_trial] is None
    assert all(c is not None for n, c in counts.items() if n not in (0, summary.best_trial))


def test_resume_after_a_failed_final_phase_redoes_it_without_more_children(tmp_path):
    space = parse_space(tiny_space(budget={"generations": 1, "children": 2},
                                   final={"lr": 1e7, "epochs": 1, "batch_size": 64}))
    first = run_search(SearchOptions(space=space, workdir=tmp_path, study="f", seed=3))
    study = load_study(open_storage(first.storage), "f")
    assert study.trials[-1].user_attrs["rule"] == "final" and study.trials[-1].state == TrialState.FAIL
    fallback = min((t for t in study.trials if t.state == TrialState.COMPLETE),
                   key=lambda t: (t.user_attrs["val_loss"], t.number))
    assert first.best_trial == fallback.number  # no final network: the best by the study's metric
    before = len(study.trials)
    again = run_search(SearchOptions(space=space, workdir=tmp_path, study="f", seed=3, resume=True,
                                     overrides=Overrides(generations=3)))
    trials = load_study(open_storage(again.storage), "f").trials
    assert len(trials) == before + 1  # one more final attempt, no new generation
    assert [t.user_attrs["rule"] for t in trials[-2:]] == ["final", "final"]


def test_loss_selection_never_compares_a_loss_with_an_error():
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from morphnas.search.study import selection_score

    def trial(value, **attrs):
        return create_trial(value=value, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                            user_attrs=attrs)

    with_loss, without, nan = trial(0.05, val_loss=0.2), trial(0.01), trial(0.0, val_loss=float("nan"))
    ranked = sorted([without, nan, with_loss], key=lambda t: selection_score(t, "loss"))
    assert ranked[0] is with_loss  # an old trial's small error does not beat a loss
    assert sorted([with_loss, without], key=lambda t: selection_score(t, "error"))[0] is without


def test_a_study_stored_before_the_final_phase_resumes_as_it_was_started():
    from morphnas.search.controller import _stored_space

    old = {k: v for k, v in parse_space(tiny_space()).model_dump(mode="json").items() if k != "final"}
    upgraded = parse_space(_stored_space(old))
    assert upgraded.final is None and upgraded.dataset.augment is False and upgraded.selection.metric == "error"
    current = parse_space(tiny_space()).model_dump(mode="json")
    assert _stored_space(current) == current


def test_same_seed_same_search(tmp_path):
    a = search(tmp_path / "a", budget={"generations": 1, "children": 2})
    b = search(tmp_path / "b", budget={"generations": 1, "children": 2})
    sa = load_study(open_storage(a.storage), "t")
    sb = load_study(open_storage(b.storage), "t")
    assert [t.values for t in sa.trials] == [t.values for t in sb.trials]
    assert [t.user_attrs["morphs"] for t in sa.trials] == [t.user_attrs["morphs"] for t in sb.trials]


def test_diverging_children_fail_with_reason_and_search_completes(tmp_path):
    summary = search(tmp_path, finetune={"lr": {"low": 1e6, "high": 1e7, "log": True},
                                         "epochs": {"low": 1, "high": 1, "int": True}})
    study = load_study(open_storage(summary.storage), "t")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and summary.n_failed == len(failed)
    assert all("TrainingDivergedError" in t.user_attrs["reason"] for t in failed)
    assert summary.lineage == [0, summary.best_trial]  # only the seed learned: the final phase trains it on


def test_children_over_the_limits_are_pruned_before_training(tmp_path):
    summary = search(tmp_path, limits={"max_params": 10})
    study = load_study(open_storage(summary.storage), "t")
    children = study.trials[1:-1]
    assert children and all(t.state == TrialState.PRUNED for t in children)
    assert all(t.user_attrs["reason"].startswith("over limits: params") for t in children)
    assert all("history" not in t.user_attrs for t in children)  # never trained


def start_cli_search(tmp_path, *args, **overrides):
    """``morphnas search`` in a subprocess on the tiny space with ``overrides`` (2 generations x 2
    children unless flags say)."""
    space = tmp_path / "tiny.yaml"
    space.write_text(json.dumps(tiny_space(**overrides)))  # JSON is YAML
    # Ctrl-C as from a terminal: a test process may have inherited SIGINT ignored (then so would the search)
    program = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "from morphnas.cli import app; app()")
    command = [sys.executable, "-c", program, "search", "--space", str(space),
               "--study", "k", "--workdir", str(tmp_path / "w"), "--seed", "5", *args]
    return subprocess.Popen(command, env={**os.environ, "PYTHONHASHSEED": "0"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def poll_trials(db: Path) -> list[tuple[str, str | None]]:
    """(state, generation JSON) of every trial, read-only: opening the database with Optuna while
    the search creates it would race the search's own schema creation."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            return con.execute(
                "SELECT t.state, a.value_json FROM trials t LEFT JOIN trial_user_attributes a "
                "ON a.trial_id = t.trial_id AND a.key = 'generation'").fetchall()
    except sqlite3.Error:  # the schema is being created, or the database is locked for a moment
        return []


def stop_mid_generation(proc, tmp_path, sig) -> dict[int, tuple]:
    """Send ``sig`` once some trials have finished and a child is training; the finished trials then."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        trials = poll_trials(tmp_path / "w" / "morphnas.db")
        done = [state for state, _ in trials if state not in ("RUNNING", "WAITING")]
        # a child of generation 1 or 2 (of 3): the search then has seconds of work left, so the signal
        # cannot land after it ended (the final phase's child may end between this poll and the signal)
        if len(done) >= 3 and any(state == "RUNNING" and gen in ("1", "2") for state, gen in trials):
            proc.send_signal(sig)
            proc.wait(timeout=120)
            return {t.number: (t.state, t.values, t.user_attrs.get("morphs"))
                    for t in study_trials(tmp_path)  # the stopped search changes nothing any more
                    if t.state.is_finished() and failure_reason(t) != INTERRUPTED}
    raise AssertionError(f"the search ended before it could be stopped: {proc.communicate()[1][-2000:]}")


def study_trials(tmp_path):
    return optuna.load_study(study_name="k", storage=f"sqlite:///{tmp_path / 'w' / 'morphnas.db'}").get_trials()


def test_sigkill_mid_generation_then_resume_with_study_alone_keeps_the_budget_flags(tmp_path):
    proc = start_cli_search(tmp_path, "--generations", "3", "--children", "3", "--epochs", "2")
    finished_before = stop_mid_generation(proc, tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    killed = [t.number for t in study_trials(tmp_path) if t.state == TrialState.RUNNING]  # none if between two
    resumed = start_cli_search(tmp_path, "--resume")  # the flags are the study's, not given again
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    trials = study_trials(tmp_path)
    for number, (state, values, morphs) in finished_before.items():
        assert (trials[number].state, trials[number].values, trials[number].user_attrs.get("morphs")) == (
            state, values, morphs)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(failure_reason(trials[n]) == INTERRUPTED for n in killed), "a killed child was not marked"
    # a child killed right after it was asked may have no attributes yet
    kept = [t for t in trials if failure_reason(t) != INTERRUPTED]
    per_generation = {}
    for t in kept:
        if t.user_attrs["rule"] != "final":
            per_generation.setdefault(t.user_attrs["generation"], []).append(t.number)
    assert {g: len(n) for g, n in per_generation.items()} == {0: 1, 1: 3, 2: 3, 3: 3}  # the original budget
    assert sum(1 for t in trials if t.user_attrs.get("generation") == 0) == 1  # the seed is never retrained
    for t in kept[1:]:  # generations keep counting along every lineage
        assert t.user_attrs["generation"] > trials[t.user_attrs["parent"]].user_attrs["generation"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C; kill or a job scheduler's limit
def test_ctrl_c_or_sigterm_marks_the_children_in_flight_and_says_how_to_resume(tmp_path, sig):
    proc = start_cli_search(tmp_path, "--generations", "3", "--children", "3", "--epochs", "2")
    finished_before = stop_mid_generation(proc, tmp_path, sig)
    err = proc.stderr.read()
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines() == [
        f"interrupted; resume with `morphnas search --study k --resume --workdir {tmp_path / 'w'}`"]
    trials = study_trials(tmp_path)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if failure_reason(t) == INTERRUPTED]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)
    for number, (state, values, _) in finished_before.items():
        assert (trials[number].state, trials[number].values) == (state, values)


class _SignalledWhileCollected:
    """Calls the SIGTERM handler from ``__del__``, as a signal landing in one of SQLAlchemy's
    weakref callbacks during garbage collection does: Python drops what the handler raises."""

    def __del__(self):
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_whose_exception_python_dropped_still_stops_the_search(tmp_path):
    def on_event(kind, data):
        # generation 1 is announced, no child asked yet (a child is made with signals deferred,
        # so a signal then is never dropped: it stops the search once the child is made)
        if kind == "generation" and data["generation"] == 1:
            _SignalledWhileCollected()

    with pytest.raises(SearchInterrupted) as stop, make_executor("local", cpus_per_child=1) as runner:
        run_search(SearchOptions(space=parse_space(tiny_space()), workdir=tmp_path, study="t", executor=runner,
                                 seed=3), on_event)
    assert stop.value.signal == signal.SIGTERM
    trials = load_study(open_storage(f"sqlite:///{tmp_path / 'morphnas.db'}"), "t").trials
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.COMPLETE), (1, TrialState.FAIL)]
    assert failure_reason(trials[1]) == INTERRUPTED  # stopped at the next ask


def test_resume_refuses_up_front_when_the_checkpoints_are_gone(tmp_path):
    summary = search(tmp_path, budget={"generations": 1, "children": 2})
    shutil.rmtree(tmp_path / "studies")
    result = runner.invoke(app, ["search", "--study", "t", "--resume", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "checkpoints of trials [0," in result.output and "moved or deleted" in result.output
    assert len(load_study(open_storage(summary.storage), "t").trials) == summary.n_trials  # nothing new was tried


def test_a_second_driver_is_refused_while_the_first_runs_the_study(tmp_path):
    proc = start_cli_search(tmp_path, "--generations", "2", "--children", "2", "--epochs", "2")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if any(state == "RUNNING" for state, _ in poll_trials(tmp_path / "w" / "morphnas.db")):
            break
    else:
        raise AssertionError(f"no child was seen running: {proc.communicate()[1][-2000:]}")
    second = subprocess.run([sys.executable, "-c", "from morphnas.cli import app; app()", "search", "--study", "k",
                             "--resume", "--workdir", str(tmp_path / "w")], capture_output=True, text=True)
    assert second.returncode == 2, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and "being run by another driver" in second.stderr
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err  # the first driver was not disturbed
    trials = study_trials(tmp_path)
    assert not [t for t in trials if failure_reason(t) == INTERRUPTED]
    third = subprocess.run(second.args, capture_output=True, text=True)  # the lease was released at the end
    assert third.returncode == 0, third.stderr


runner = CliRunner()


def test_cli_search_json(tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(tiny_space(budget={"generations": 1, "children": 2})))
    result = runner.invoke(app, ["search", "--space", str(space), "--workdir", str(tmp_path), "--study", "c",
                                 "--json", "--seed", "1"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert set(out) >= {"study", "storage", "best_trial", "val_error", "test_error", "params", "macs", "n_trials",
                        "n_failed"}
    assert out["n_trials"] == 4 and 0 <= out["val_error"] <= 1
    again = runner.invoke(app, ["search", "--space", str(space), "--workdir", str(tmp_path), "--study", "c"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_cli_multi_objective_json_gives_the_pareto_front_and_seed_epochs_bound_the_seed(tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(tiny_space(budget={"generations": 1, "children": 3})))
    result = runner.invoke(app, ["search", "--space", str(space), "--workdir", str(tmp_path), "--study", "mo",
                                 "--objectives", "error,macs", "--seed-epochs", "1", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    study = load_study(open_storage(f"sqlite:///{tmp_path / 'morphnas.db'}"), "mo")
    assert [p["trial"] for p in out["pareto_front"]] == sorted(
        (t.number for t in study.best_trials), key=lambda n: (study.trials[n].values[0], n))
    assert all(set(p) == {"trial", "val_error", "params", "macs"} for p in out["pareto_front"])
    assert len(study.trials[0].user_attrs["history"]) == 1  # the seed trained 1 epoch, not the space's 3


@pytest.mark.parametrize("args,message", [
    (["--space", "/nonexistent.yaml"], "cannot read search space"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--storage", "nosuchdb://x"], "cannot open storage"),
    (["--storage", "postgresql://me:s3cret@127.0.0.1:1/db"], "'postgresql://me:***@127.0.0.1:1/db'"),
    (["--resume", "--study", "ghost"], "no study named 'ghost'"),
    (["--executor", "slurm"], "unknown executor 'slurm'"),
    (["--epochs", "0"], "--epochs must be > 0"),
    (["--seed", "-1"], "Invalid value for '--seed'"),
    (["--workdir", "/proc/nope"], "--workdir '/proc/nope' cannot be created"),  # before any study is made
    (["--workdir", "/proc/nope", "--storage", "sqlite:///{tmp}/s.db"], "--workdir '/proc/nope' cannot be created"),
])
def test_cli_search_bad_input_one_line_exit_2(tmp_path, args, message):
    marker = tmp_path / "morphnas.db"
    args = [a.format(tmp=tmp_path) for a in args]
    result = runner.invoke(app, ["search", "--workdir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert "s3cret" not in result.output  # a storage URL is shown without its password
    if args[0] != "--resume":
        assert not marker.exists() or marker.stat().st_size > 0
    assert not (tmp_path / "s.db").exists()  # no empty study left behind


def test_a_workdir_that_is_a_file_is_one_line_exit_2(tmp_path):
    afile = tmp_path / "runs"
    afile.write_text("not a directory")
    result = runner.invoke(app, ["search", "--workdir", str(afile)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "is a file, not a directory" in lines[0], result.output


@pytest.mark.parametrize("command", [["search", "--space"], ["arch", "show"]])
def test_a_binary_file_is_one_line_exit_2(tmp_path, command):
    binary = tmp_path / "space.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    result = runner.invoke(app, [*command, str(binary), "--workdir" if command[0] == "search" else "--json",
                                 *([str(tmp_path)] if command[0] == "search" else [])])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "not a UTF-8 text file" in lines[0], result.output


def test_ray_search_matches_local_search(tmp_path):
    budget = {"generations": 1, "children": 2}  # with successive halving: the better child trains on
    local = search(tmp_path / "local", budget=budget, finetune=HALVING)
    ray_run = search(tmp_path / "ray", executor="ray", budget=budget, finetune=HALVING)
    a = load_study(open_storage(local.storage), "t").trials
    b = load_study(open_storage(ray_run.storage), "t").trials
    assert [t.state for t in b] == [t.state for t in a]
    assert [t.values for t in b] == [t.values for t in a]  # same seed, same search, either executor
    assert all(t.user_attrs.get("parent") is not None for t in b[1:])
    files = {name: sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob("*") if p.is_file())
             for name in ("local", "ray")}
    assert files["ray"] == files["local"], "Ray left files beside the project's own (Tune copies of weights?)"


def test_every_trained_trial_reports_its_epochs_as_events(tmp_path):
    events = []
    with make_executor("local", cpus_per_child=1) as runner:
        summary = run_search(SearchOptions(space=parse_space(tiny_space()), workdir=tmp_path, study="t",
                                           executor=runner, seed=3), lambda kind, info: events.append((kind, info)))
    epochs = [info for kind, info in events if kind == "epoch"]
    trials = load_study(open_storage(summary.storage), "t").trials
    trained = {t.number for t in trials if t.user_attrs.get("history")}
    assert trained <= {info["trial"] for info in epochs} and 0 in trained  # the seed, the children, the final
    elapsed = [info["elapsed"] for info in epochs]
    assert elapsed == sorted(elapsed) and elapsed[-1] <= summary.seconds + 0.1  # summary.seconds is rounded
    assert all(info["budget"] is None for info in epochs)  # tiny_space has no time budget
    seed_epochs = [info["epoch"] for info in epochs if info["trial"] == 0]
    assert seed_epochs == [1, 2, 3]
    # each epoch says of how many: the seed's 3, a child's and the final phase's 1
    assert {info["epochs"] for info in epochs} == {3, 1} and all(info["epoch"] <= info["epochs"] for info in epochs)
    # a generation says its children's epochs and the seconds it is planned to take, at the seed's pace
    generations = [info for kind, info in events if kind == "generation"]
    assert [(g["generation"], g["children"], g["epochs"]) for g in generations] == [(1, 2, 1), (2, 2, 1)]
    assert all(0 < g["seconds"] < summary.seconds for g in generations)
