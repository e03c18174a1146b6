"""``morphnas studies`` on real tiny searches (digits): one single-objective study, one error-vs-MACs study."""

import json
import shutil
from pathlib import Path

import pytest
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.grammar.space import parse_space
from morphnas.search import SearchOptions, best_trial, lineage, load_study, open_storage, run_search
from morphnas.search.study import default_storage

pytestmark = pytest.mark.slow

runner = CliRunner()
WIDE = {"COLUMNS": "220"}  # rich tables keep whole cells
SPACE = {
    "name": "tiny",
    "dataset": {"name": "digits"},
    "seed": {"arch": "cnn", "epochs": 2, "lr": 0.1, "batch_size": 64},
    "rules": {"widen": {"params": {"factor": [1.5, 2.0]}}},
    "finetune": {"epochs": {"low": 1, "high": 1, "int": True}, "batch_size": 64},
    "budget": {"generations": 2, "children": 2},
}
STUDIES = {"tiny": {}, "tinymo": {"objectives": ["error", "macs"]}}


def make_studies(base: Path) -> Path:
    """Run the two tiny searches into ``base/tiny-studies`` once per session; return that work directory."""
    workdir = base / "tiny-studies"
    marker = workdir / "searched"
    if not marker.exists():
        for name, extra in STUDIES.items():
            run_search(SearchOptions(space=parse_space({**SPACE, **extra}), workdir=workdir, study=name, seed=0))
        marker.touch()
    return workdir


def with_failures(workdir: Path, into: Path) -> Path:
    """A copy of the study database (same checkpoints) whose study ``tiny`` gains a failed and a pruned child."""
    shutil.copy(workdir / "morphnas.db", into / "morphnas.db")
    s = study(into, "tiny")
    morph = {"name": "widen", "site": "c1_conv", "params": {"channels": 32}, "seed": 5}
    common = {"generation": 3, "parent": best_trial(s).number, "rule": "widen", "morphs": [morph], "params": 50_000,
              "macs": 400_000}
    s.add_trial(create_trial(state=TrialState.FAIL, user_attrs={**common, "reason": "TrainingDivergedError: nan"}))
    s.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={**common, "reason": "over limits: params 50000"}))
    return into


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return make_studies(tmp_path_factory.getbasetemp())


def study(workdir: Path, name: str):
    return load_study(open_storage(default_storage(workdir)), name)


def run(*args: str, ok: bool = True):
    result = runner.invoke(app, list(args), env=WIDE)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def assert_one_line_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("morphnas: error:") and text in lines[0], result.output


def test_list_shows_every_study_with_counts_and_best(workdir):
    table = run("studies", "list", "--workdir", str(workdir)).output
    assert "tiny " in table and "tinymo" in table and "error, macs" in table
    info = json.loads(run("studies", "list", "--workdir", str(workdir), "--json").output)
    assert info["storage"] == default_storage(workdir)
    rows = {r["name"]: r for r in info["studies"]}
    assert set(rows) == set(STUDIES)
    for name, row in rows.items():
        s = study(workdir, name)
        best = best_trial(s)
        n = 6 if name == "tiny" else 5  # seed + 2 x 2 children (+ the final phase, single-objective only)
        assert row["n_trials"] == len(s.trials) == n
        assert row["complete"] + row["pruned"] + row["fail"] == n and row["running"] == 0
        assert row["complete"] == sum(t.state == TrialState.COMPLETE for t in s.trials)
        assert (row["best_trial"], row["best_val_error"]) == (best.number, best.values[0])
        assert row["first"] <= row["last"] and row["first"].replace("T", " ") in table
    assert rows["tinymo"]["objectives"] == ["error", "macs"] and rows["tiny"]["objectives"] == ["error"]
    assert str(rows["tiny"]["best_trial"]) in table


def test_show_lists_every_trial_and_top_sorts_by_val_error(workdir):
    s = study(workdir, "tiny")
    table = run("studies", "show", "tiny", "--workdir", str(workdir)).output
    assert "pareto" not in table
    assert s.trials[-1].user_attrs["rule"] == "final" and not s.trials[-1].user_attrs["morphs"]
    for t in s.trials[1:-1]:
        morph = t.user_attrs["morphs"][0]
        assert f"{morph['name']}@{morph['site']}" in table
    assert f"{best_trial(s).number} *" in table
    info = json.loads(run("studies", "show", "tiny", "--workdir", str(workdir), "--json").output)
    assert info["multi_objective"] is False and info["best_trial"] == best_trial(s).number
    assert [r["number"] for r in info["trials"]] == [0, 1, 2, 3, 4, 5]
    assert info["trials"][0]["parent"] is None and info["trials"][0]["rule"] == "seed"
    assert all(r["pareto"] is None for r in info["trials"])
    top = json.loads(run("studies", "show", "tiny", "--top", "2", "--workdir", str(workdir), "--json").output)
    done = sorted((t.values[0], t.number) for t in s.trials if t.state == TrialState.COMPLETE)
    assert [r["number"] for r in top["trials"]] == [n for _, n in done[:2]]
    assert top["trials"][0]["val_error"] == done[0][0]


def test_show_marks_the_pareto_front_of_a_multi_objective_study(workdir):
    s = study(workdir, "tinymo")
    front = {t.number for t in s.best_trials}
    assert front
    info = json.loads(run("studies", "show", "tinymo", "--workdir", str(workdir), "--json").output)
    assert info["multi_objective"] is True
    assert {r["number"] for r in info["trials"] if r["pareto"]} == front
    best = best_trial(s)
    assert info["best_trial"] == best.number and best.number in front
    lines = run("studies", "show", "tinymo", "--workdir", str(workdir)).output.splitlines()
    header = next(i for i, line in enumerate(lines) if "pareto" in line)  # plain aligned rows in a pipe
    column = lines[header].index("pareto")
    marked = {int(line.split()[0]) for line in lines[header + 1:] if line[column:column + 6].strip() == "yes"}
    assert marked == front


def test_tables_in_a_pipe_are_plain_rows_that_never_cut_a_cell(workdir):
    s = study(workdir, "tiny")
    output = runner.invoke(app, ["studies", "show", "tiny", "--workdir", str(workdir)], env={"COLUMNS": "60"}).output
    assert "…" not in output and "│" not in output
    for t in s.trials:
        for morph in t.user_attrs["morphs"]:
            assert f"{morph['name']}@{morph['site']}" in output  # whole, however narrow the terminal


def test_lineage_walks_from_the_seed_to_the_best_trial_with_morphs_and_errors(workdir):
    s = study(workdir, "tiny")
    best = best_trial(s)
    output = run("studies", "lineage", "tiny", "--workdir", str(workdir)).output
    lines = [line for line in output.splitlines() if "trial " in line and "->" in line]
    chain = lineage(s, best.number)
    assert len(lines) == len(chain) >= 2
    assert "trial 0" in lines[0] and "seed cnn" in lines[0]
    for line, t in zip(lines, chain, strict=True):
        assert f"trial {t.number} " in line and f"{t.values[0]:.2%}" in line
        for morph in t.user_attrs["morphs"]:
            assert f"{morph['name']}@{morph['site']}" in line
    as_json = json.loads(run("studies", "lineage", "tiny", "--workdir", str(workdir), "--json").output)
    assert [step["trial"] for step in as_json["lineage"]] == [t.number for t in chain]
    assert [step["val_error"] for step in as_json["lineage"]] == [t.values[0] for t in chain]
    assert as_json["lineage"][0]["parent"] is None and as_json["lineage"][1]["morphs"] == chain[1].user_attrs["morphs"]
    deepest = max(s.trials, key=lambda t: len(lineage(s, t.number)))
    output = run("studies", "lineage", "tiny", "--trial", str(deepest.number), "--workdir", str(workdir)).output
    assert f"lineage of trial {deepest.number}" in output
    assert all(f"trial {t.number} " in output for t in lineage(s, deepest.number))


def test_failed_and_pruned_children_show_their_state_and_reason(workdir, tmp_path):
    w = ["--workdir", str(with_failures(workdir, tmp_path))]
    table = run("studies", "show", "tiny", *w).output
    assert "fail " in table and "TrainingDivergedError: nan" in table
    assert "pruned" in table and "over limits" in table
    row = json.loads(run("studies", "list", *w, "--json").output)["studies"][0]
    assert (row["n_trials"], row["fail"], row["pruned"]) == (8, 1, 1)
    output = run("studies", "lineage", "tiny", "--trial", "6", *w).output
    assert "trial 6  widen@c1_conv (channels=32)  ->  fail: TrainingDivergedError: nan" in output
    output = run("studies", "lineage", "tiny", "--trial", "7", *w).output
    assert "trial 7  widen@c1_conv (channels=32)  ->  pruned: over limits" in output and "trial 6" not in output
    top = json.loads(run("studies", "show", "tiny", "--top", "10", *w, "--json").output)["trials"]
    assert all(r["state"] == "COMPLETE" for r in top) and len(top) == 6


def test_unknown_study_trial_or_database_is_one_line_exit_2(workdir, tmp_path):
    w = ["--workdir", str(workdir)]
    assert_one_line_error(run("studies", "show", "nope", *w, ok=False), "no study named 'nope'")
    assert_one_line_error(run("studies", "lineage", "nope", *w, ok=False), "no study named 'nope'")
    assert_one_line_error(run("studies", "lineage", "tiny", "--trial", "99", *w, ok=False), "has no trial 99")
    assert_one_line_error(run("studies", "lineage", "tiny", "--trial", "-1", *w, ok=False), "has no trial -1")
    assert_one_line_error(run("studies", "list", "--workdir", str(tmp_path), ok=False), "no study database")
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    assert_one_line_error(run("studies", "list", "--storage", missing, ok=False), "no study database")
    assert not (tmp_path / "missing.db").exists()  # reading never creates a database
    assert_one_line_error(run("studies", "list", "--storage", "nosuchdb://x", ok=False), "cannot open storage")


def test_list_of_an_empty_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_storage(url)
    assert "no studies" in run("studies", "list", "--storage", url).output
    assert json.loads(run("studies", "list", "--storage", url, "--json").output)["studies"] == []
