"""The search: controller, lineages and the Optuna study bridge."""

from morphnas.search.lineages import BestLineages, ParentSelector
from morphnas.search.study import (
    best_trial,
    find_trial,
    lineage,
    load_study,
    load_trials,
    open_storage,
    trial_checkpoint,
    trials_frame,
)

__all__ = [
    "BestLineages", "ParentSelector", "Search", "SearchOptions", "SearchSummary", "best_trial", "find_trial",
    "lineage", "load_study", "load_trials",
    "open_storage", "run_search", "trial_checkpoint", "trials_frame",
]

_CONTROLLER = ("Search", "SearchOptions", "SearchSummary", "run_search")


def __getattr__(name: str):
    """The controller's names, imported on first use (PEP 562): the controller imports torch, and
    ``morphnas studies`` reads studies through this package without it."""
    if name not in _CONTROLLER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from morphnas.search import controller

    return getattr(controller, name)
