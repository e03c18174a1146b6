"""The time-budget planner: how a search splits its wall-clock budget across its phases."""

from __future__ import annotations

import math
import time

import pytest

from morphnas.grammar.space import parse_space
from morphnas.search import SearchOptions, load_study, open_storage, run_search
from morphnas.search.budget import (
    MIN_EPOCH_SHARE,
    SUMMARY_RESERVE,
    fit_generation,
    generation_work,
    plan_budget,
    rung_sizes,
)


def test_budget_is_split_into_seed_generations_and_final_phase() -> None:
    plan = plan_budget(start=100.0, total=600.0, seed_share=0.3, final_share=0.3)
    assert plan.seed_seconds == pytest.approx(180.0)
    assert plan.generations_until == pytest.approx(100.0 + 420.0)
    assert plan.end == pytest.approx(700.0)
    # started on time, the final phase gets its share minus the summary's reserve
    assert plan.final_seconds(now=520.0) == pytest.approx(180.0 - SUMMARY_RESERVE * 600)
    # generations that overran take their time from the final phase; nothing is left after the end
    assert plan.final_seconds(now=600.0) == pytest.approx(100.0 - SUMMARY_RESERVE * 600)
    assert plan.final_seconds(now=700.0) == 0.0


def test_no_budget_means_no_deadlines() -> None:
    plan = plan_budget(start=5.0, total=None, seed_share=0.3, final_share=0.3)
    assert plan.seed_seconds is None and plan.final_seconds(now=1e9) is None
    assert math.isinf(plan.generations_until) and math.isinf(plan.end)


def test_a_lineage_position_is_the_fraction_of_the_budget_spent() -> None:
    plan = plan_budget(start=100.0, total=600.0, seed_share=0.25, final_share=0.35)
    assert [plan.position(now, 0.0) for now in (100.0, 250.0, 490.0, 700.0, 900.0)] == pytest.approx(
        [0.0, 0.25, 0.65, 1.0, 1.0]
    )


def test_without_a_budget_the_position_follows_the_phases_and_generations() -> None:
    plan = plan_budget(start=5.0, total=None, seed_share=0.25, final_share=0.35)
    # the generations share 0.25 .. 0.65 evenly; the final phase then anneals from 0.65
    assert [plan.position(1e9, done) for done in (0.0, 0.5, 1.0, 2.0)] == pytest.approx([0.25, 0.45, 0.65, 0.65])


def test_rungs_and_work_of_successive_halving() -> None:
    assert rung_sizes(4, 2) == [4, 2, 1] and rung_sizes(5, 3) == [5, 2, 1] and rung_sizes(4, None) == [4]
    # 4 x 1 epoch, 2 x 2, 1 x 4: the default space's generation is 12 child-epochs
    assert generation_work(4, 1.0, 2) == 12.0 and generation_work(3, 2.0, None) == 6.0


def test_a_generation_that_does_not_fit_is_shortened_then_thinned_then_skipped() -> None:
    # 12 child-epochs of 10 s: 120 s as configured
    assert fit_generation(4, 1.0, 2, epoch_seconds=10.0, seconds_left=500.0) == (4, 1.0)
    assert fit_generation(4, 1.0, 2, epoch_seconds=10.0, seconds_left=60.0) == (4, 0.5)  # half the epochs
    # a quarter of the epochs would still not fit 4 children: 2 children (4 child-epochs, 40 s) at 50 %
    assert fit_generation(4, 1.0, 2, epoch_seconds=10.0, seconds_left=20.0) == (2, 0.5)
    assert fit_generation(4, 1.0, 2, epoch_seconds=10.0, seconds_left=9.0) is None  # 2 at a quarter: 10 s
    assert fit_generation(4, 1.0, 2, epoch_seconds=10.0, seconds_left=-5.0) is None
    assert MIN_EPOCH_SHARE == 0.25


@pytest.mark.slow
def test_a_search_on_a_large_data_set_keeps_a_tiny_budget_within_5_percent(tmp_path) -> None:
    """Fashion-MNIST (54,000 training images) with 40 s: an epoch of the seed alone would not
    fit, so the seed's training, the generations and the final phase are all cut by the budget."""
    space = parse_space({
        "name": "tiny-budget", "dataset": {"name": "fashion-mnist"},
        "seed": {"arch": "cnn", "epochs": 50, "lr": 0.05, "batch_size": 128},
        "rules": {"widen": {"params": {"factor": [1.5]}}, "deepen": {}},
        "finetune": {"schedule": "lineage", "epochs": 0.5, "halving": 2, "batch_size": 128},
        "final": {"epochs": 50},
        "budget": {"generations": 20, "children": 4, "time_budget": 40, "seed_share": 0.25, "final_share": 0.35},
    })
    events = []
    started = time.monotonic()
    summary = run_search(SearchOptions(space=space, workdir=tmp_path, study="b", seed=0),
                         lambda kind, info: events.append((kind, info)))
    wall = time.monotonic() - started
    assert wall <= 40 * 1.05, events
    assert wall >= 40 * 0.8  # and it used its budget
    study = load_study(open_storage(summary.storage), "b")
    rules = [t.user_attrs.get("rule") for t in study.trials]
    assert rules[0] == "seed" and rules[-1] == "final"
    messages = [info["message"] for kind, info in events if kind == "budget"]
    assert all(m.startswith("time budget: ") and "\n" not in m for m in messages)
