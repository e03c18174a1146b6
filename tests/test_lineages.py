"""Parent selection as a strategy object named in the space, on real Optuna trials."""

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from morphnas.errors import ConfigError
from morphnas.grammar.space import Selection
from morphnas.search import BestLineages, ParentSelector
from morphnas.search.lineages import SELECTORS, make_selector, may_parent
from morphnas.search.study import selection_score


def trial(number: int, loss: float, state=TrialState.COMPLETE, checkpoint=True):
    t = create_trial(state=state, value=loss if state == TrialState.COMPLETE else None,
                     params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                     user_attrs={"val_loss": loss, **({"checkpoint": f"t/{number}"} if checkpoint else {})})
    t.number = number
    return t


def by_loss(t):
    return selection_score(t, "loss")


TRIALS = [trial(0, 0.30), trial(1, 0.10), trial(2, 0.20), trial(3, 0.05, TrialState.PRUNED),
          trial(4, 0.01, checkpoint=False)]


def test_only_completed_trials_with_a_checkpoint_may_parent():
    assert [t.number for t in may_parent(TRIALS)] == [0, 1, 2]  # not the pruned one, not the checkpoint-less one


def test_best_lineages_share_the_slots_round_robin_best_first():
    chosen = BestLineages(parents=2).select(may_parent(TRIALS), 4, by_loss, None)
    assert [t.number for t in chosen] == [1, 2, 1, 2]


def test_a_cap_per_parent_can_leave_slots_empty():
    chosen = BestLineages(parents=2, max_children_per_parent=1).select(may_parent(TRIALS), 4, by_loss, None)
    assert [t.number for t in chosen] == [1, 2]


def test_pareto_members_come_first():
    chosen = BestLineages(parents=1).select(may_parent(TRIALS), 2, by_loss, pareto={0})
    assert [t.number for t in chosen] == [0, 0]


def test_a_selector_is_made_by_the_name_the_space_gives_it():
    best = make_selector(Selection(parents=3, max_children_per_parent=2))  # the default name
    assert type(best) is BestLineages and (best.parents, best.max_children_per_parent) == (3, 2)

    class Worst(ParentSelector):  # a new policy is one class: its name registers it
        name = "worst_first"

        def select(self, trials, slots, score, pareto):
            return sorted(trials, key=score, reverse=True)[:slots]

    assert SELECTORS["worst_first"] is Worst
    chosen = make_selector(Selection(selector="worst_first")).select(may_parent(TRIALS), 1, by_loss, None)
    assert [t.number for t in chosen] == [0]
    with pytest.raises(ConfigError, match="unknown selector 'nope'; known: .*best_lineages"):
        make_selector(Selection(selector="nope"))
