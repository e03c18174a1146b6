"""``morphnas search`` in a pipe: plain lines that never wrap, and a summary that says what its
seed figure is (the seed after its seed phase, not a baseline with the whole budget)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from morphnas.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()
SPACE = {
    "name": "tiny",
    "dataset": {"name": "digits"},
    "seed": {"arch": "mlp", "epochs": 1, "lr": 0.1, "batch_size": 64},
    "rules": {"widen": {"params": {"factor": [1.5]}}},
    "finetune": {"epochs": {"low": 1, "high": 1, "int": True}, "batch_size": 64},
    "final": {"lr": 0.02, "epochs": 1, "batch_size": 64},
    "budget": {"generations": 1, "children": 1},
}


def test_a_piped_search_summary_names_the_seed_phase_and_never_wraps(tmp_path):
    space = tmp_path / "a space with a name long enough to wrap at eighty columns in a pipe.json"
    space.write_text(json.dumps(SPACE))
    result = runner.invoke(app, ["search", "--space", str(space), "--workdir", str(tmp_path), "--study",
                                 "a-study-name-that-makes-the-summary-lines-longer-than-eighty-columns"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("generation 1: 1 child, 1 epoch each, ~") for line in lines), lines
    summary = lines[lines.index(next(line for line in lines if line.startswith("best trial"))):]
    assert summary[0].startswith("best trial ") and summary[0].endswith(
        "of study a-study-name-that-makes-the-summary-lines-longer-than-eighty-columns (3 trials, 0 failed)")
    test_line = next(line for line in summary if line.startswith("test error "))
    assert test_line.endswith("(2 steps from the seed network)"), test_line  # seed -> child -> final
    seed_line = next(line for line in summary if line.startswith("  the seed network after its seed phase (1 epoch, "))
    assert "test error " in seed_line and "validation error " in seed_line
    assert not any("better" in line or "worse" in line for line in summary)
    assert all(line.startswith(("best trial", "  ", "test error")) for line in summary), summary  # none wrapped


def test_a_time_budget_flag_reaches_the_plan_as_one_typed_override(tmp_path, monkeypatch):
    """``--time-budget`` -> ``Overrides.time_budget`` (seconds) -> the space the study stores ->
    the ``BudgetPlan`` its search runs by; given again to a resume, it changes the plan."""
    from morphnas.grammar.space import Overrides, parse_space
    from morphnas.search import controller

    class Planned(Exception):
        """Raised by the stand-in for run_search once the search is made (nothing is trained)."""

    made = []

    def make_only(options, on_event=None):
        search = controller.Search(options, on_event)
        with search.lease:  # taken and released, as a run would
            pass
        made.append((options.overrides, search))
        raise Planned

    monkeypatch.setattr(controller, "run_search", make_only)
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    args = ["search", "--space", str(space), "--workdir", str(tmp_path), "--study", "b"]
    assert isinstance(runner.invoke(app, [*args, "--time-budget", "90s", "--generations", "3"]).exception, Planned)
    overrides, search = made[-1]
    assert overrides == Overrides(time_budget=90.0, generations=3)
    stored = parse_space(search.study.user_attrs["space"]).budget
    assert (stored.time_budget, stored.generations) == (90.0, 3) and search.space.budget == stored
    plan = search.plan
    assert plan.end - plan.start == pytest.approx(90.0) and plan.seed_seconds == pytest.approx(0.25 * 90.0)
    assert plan.generations_until - plan.start == pytest.approx((1 - 0.35) * 90.0)
    assert isinstance(runner.invoke(app, [*args, "--resume", "--time-budget", "2m"]).exception, Planned)
    overrides, resumed = made[-1]
    assert overrides == Overrides(time_budget=120.0)
    assert resumed.space.budget.time_budget == 120.0 and resumed.space.budget.generations == 3  # kept
    assert resumed.plan.end - resumed.plan.start == pytest.approx(120.0)
