"""Parent selection as a strategy object, on real Optuna trials."""

from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from morphnas.search import BestLineages
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


def test_best_lineages_share_the_slots_round_robin_best_first():
    chosen = BestLineages(parents=2).select(TRIALS, 4, by_loss, None)
    assert [t.number for t in chosen] == [1, 2, 1, 2]  # pruned and checkpoint-less trials never parent


def test_a_cap_per_parent_can_leave_slots_empty():
    chosen = BestLineages(parents=2, max_children_per_parent=1).select(TRIALS, 4, by_loss, None)
    assert [t.number for t in chosen] == [1, 2]


def test_pareto_members_come_first():
    chosen = BestLineages(parents=1).select(TRIALS, 2, by_loss, pareto={0})
    assert [t.number for t in chosen] == [0, 0]
