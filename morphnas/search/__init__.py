"""The search: controller, lineages and the Optuna study bridge."""

from morphnas.search.controller import Search, SearchOptions, SearchSummary, run_search
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
