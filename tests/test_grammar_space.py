import optuna
import pytest

from morphnas.errors import ConfigError
from morphnas.grammar.rules import RULES
from morphnas.grammar.sampling import suggest_descriptor
from morphnas.grammar.space import SPACES_DIR, load_space, parse_duration, parse_space


def test_shipped_spaces_load():
    names = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
    assert {"default", "resnet_cifar"} <= set(names)
    for name in names:
        space = load_space(name)
        assert space.rules and set(space.rules) <= set(RULES)
    assert load_space().dataset.name == "mnist5k"


@pytest.mark.parametrize(
    "text,message",
    [
        ("rules: {widen: {}}\nbogus: 1\n", "bogus: Extra inputs are not permitted"),
        ("rules: {teleport: {}}\n", "unknown rule\\(s\\) teleport"),
        ("rules: {widen: {params: {colour: [red]}}}\n", "rule 'widen' has no parameter"),
        ("rules: {widen: {weight: -1}}\n", "rules.widen.weight"),
        ("rules: {widen: {}}\nfinetune: {lr: {low: 0.1, high: 0.01}}\n", "low 0.1 is above high 0.01"),
        ("rules: {widen: {}}\nbudget: {time_budget: 10 minutes}\n", "duration"),
        ("rules: {}\n", "at least one rule"),
        ("rules: {widen: {params: {factor: []}}}\n", "no choices"),
        ("rules: [widen\n", "malformed YAML at line"),
        ("- just a list\n", "must be a mapping"),
    ],
)
def test_bad_spaces_are_one_line_config_errors(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_space(path)
    assert "\n" not in str(info.value)


def test_missing_space_file():
    with pytest.raises(ConfigError, match="cannot read search space"):
        load_space("/nonexistent/space.yaml")


def test_durations():
    assert parse_duration("90") == 90 and parse_duration("10m") == 600 and parse_duration("1.5h") == 5400
    assert parse_space({"rules": {"widen": {}}, "budget": {"time_budget": "2m"}}).budget.time_budget == 120
    with pytest.raises(ConfigError):
        parse_duration("soon")


def test_descriptor_sampling_honours_rule_weights():
    space = parse_space({"rules": {"widen": {"weight": 3.0, "params": {"factor": [1.5, 2.0]}}, "deepen": {}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    counts = {"widen": 0, "deepen": 0}
    for _ in range(400):
        trial = study.ask()
        d = suggest_descriptor(trial, space.rules)
        counts[d.rule] += 1
        assert 0 <= d.position <= 1
        if d.rule == "widen":
            assert d.params["factor"] in (1.5, 2.0)
        study.tell(trial, 0.0)
    assert 0.68 < counts["widen"] / 400 < 0.82  # weight 3 of 4


def test_non_scalar_choices_round_trip_through_optuna():
    space = parse_space({"rules": {"branch": {"params": {"kernels": [[1, 3], [3, 3]]}}}})
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    assert suggest_descriptor(trial, space.rules).params["kernels"] in ([1, 3], [3, 3])


def test_every_pruner_a_space_may_name_is_one_the_search_makes():
    from typing import get_args

    from morphnas.grammar.space import FineTune
    from morphnas.search.controller import PRUNERS

    assert set(get_args(FineTune.model_fields["pruner"].annotation)) == set(PRUNERS)
    assert load_space().finetune.pruner == "median" and load_space().selection.selector == "best_lineages"
    with pytest.raises(ConfigError, match="finetune.pruner: 'hyperband' is not one of 'median' or 'none'"):
        parse_space({"rules": {"widen": {}}, "finetune": {"pruner": "hyperband"}})


def test_overrides_replace_the_spaces_values_and_a_resume_takes_only_the_budgets():
    from morphnas.grammar.space import RESUMABLE, TARGETS, Overrides

    space = load_space()
    every = Overrides(generations=7, children=3, time_budget=60.0, finetune_epochs=2.0, seed_epochs=1.5,
                      objectives=["error", "macs"], dataset="digits", data_root="/data")
    assert set(TARGETS) == set(Overrides.model_fields) and RESUMABLE < set(TARGETS)
    new = every.apply(space, "the flags")
    assert (new.budget.generations, new.budget.children, new.budget.time_budget) == (7, 3, 60.0)
    assert (new.finetune.epochs, new.seed.epochs, new.objectives) == (2.0, 1.5, ["error", "macs"])
    assert (new.dataset.name, new.dataset.data_root) == ("digits", "/data")
    resumed = every.apply(space, "the flags", resume=True)
    assert (resumed.budget.generations, resumed.budget.time_budget, resumed.finetune.epochs) == (7, 60.0, 2.0)
    assert (resumed.seed, resumed.objectives, resumed.dataset) == (space.seed, space.objectives, space.dataset)
    assert Overrides().apply(space, "the flags") == space
    with pytest.raises(ConfigError, match="the flags: budget.children: Input should be greater than 0"):
        Overrides(children=0).apply(space, "the flags")
