"""The Optuna study as the record of truth: opening studies, reading trials, trial tables.

Every child is a trial. Its user attributes hold what rebuilds and explains it (parent trial,
morph records, rule descriptor, cost, preservation error, metrics, checkpoint path), read and
written through :class:`~morphnas.search.record.TrialRecord`; the architecture JSON and the
weights live in the trial's checkpoint directory, which keeps the attributes small enough for
any SQL backend.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from morphnas.errors import StudyError
from morphnas.search.record import FIELDS, TrialRecord, trial_schema
from morphnas.search.record import INTERRUPTED as INTERRUPTED  # re-exported: what readers of reasons compare with

if TYPE_CHECKING:
    import pandas

optuna.logging.set_verbosity(optuna.logging.WARNING)


def default_storage(workdir: str | Path) -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'morphnas.db'}"


def shown_url(url: str) -> str:
    """``url`` as printed: its password, if any, replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: nothing it could hide either
        return url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage for ``url``; a URL that cannot be opened raises StudyError."""
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # SQLAlchemy and driver errors vary by backend
        message = str(err).splitlines()[0].replace(url, shown_url(url))
        raise StudyError(f"cannot open storage {shown_url(url)!r}: {type(err).__name__}: {message}") from None


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load_study(storage: optuna.storages.BaseStorage, name: str, **kwargs: Any) -> optuna.Study:
    if name not in study_names(storage):
        known = ", ".join(study_names(storage)) or "none"
        raise StudyError(f"no study named {name!r} in this storage (studies: {known})")
    study = optuna.load_study(study_name=name, storage=storage, **kwargs)
    trial_schema(study)  # refuses a study written in a newer format
    return study


def study_dir(study: optuna.Study) -> Path | None:
    """Where a search keeps the study's files: ``<workdir>/studies/<name>``.

    None for a study made outside a search (no ``workdir`` attribute) or whose name would not
    make a directory inside ``<workdir>/studies`` (``..``, an absolute path).
    """
    workdir = study.user_attrs.get("workdir")
    if workdir is None:
        return None
    root = Path(workdir) / "studies"
    directory = root / study.study_name
    return directory if root.resolve() in directory.resolve().parents else None


def delete_study(storage: optuna.storages.BaseStorage, name: str) -> Path | None:
    """Delete study ``name`` from ``storage``, then its directory (:func:`study_dir`) if there is one.

    Returns the directory removed, or None. An unknown name raises StudyError.
    """
    directory = study_dir(load_study(storage, name))
    optuna.delete_study(study_name=name, storage=storage)
    if directory is None or not directory.is_dir():
        return None
    shutil.rmtree(directory)
    return directory


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def val_error(trial: FrozenTrial) -> float:
    """A finished trial's validation error (the first objective); inf when it has none."""
    if trial.state != TrialState.COMPLETE or not trial.values:
        return math.inf
    return float(trial.values[0])


def study_metric(study: optuna.Study) -> str:
    """What ranks a study's trials (its space's ``selection.metric``; ``"error"`` for studies
    made before the metric existed)."""
    return str(study.user_attrs.get("space", {}).get("selection", {}).get("metric", "error"))


def selection_score(trial: FrozenTrial, metric: str = "error") -> tuple[int, float]:
    """The key that ranks ``trial`` as a parent or final network (lower is better): its
    :func:`ranking_key`; unfinished trials have no loss and rank last by their error (infinite)."""
    loss = TrialRecord.from_trial(trial).val_loss if trial.state == TrialState.COMPLETE else None
    return ranking_key(metric, val_error(trial), loss)


def ranking_key(metric: str, error: float, loss: float | None) -> tuple[int, float]:
    """``"error"``: the validation error. ``"loss"``: the validation loss (mean cross-entropy);
    a network without a finite loss ranks after every one that has one, by its error, so a
    loss and an error are never compared."""
    if metric == "loss" and loss is not None and math.isfinite(loss):
        return (0, float(loss))
    return (0 if metric == "error" else 1, error)


def final_trial(study: optuna.Study) -> FrozenTrial | None:
    """The network the final phase trained (the completed trial of rule ``final``), or None."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if TrialRecord.from_trial(t).rule == "final"]
    return done[-1] if done else None


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The search's result: its final network once the final phase has run; before that (or
    without one) the best by the study's selection metric (validation loss or error), on the
    Pareto front for a multi-objective study.

    >>> import optuna
    >>> from optuna.trial import create_trial
    >>> study = optuna.create_study()
    >>> for error, rule in [(0.10, "seed"), (0.05, "widen"), (0.07, "final")]:
    ...     study.add_trial(create_trial(value=error, user_attrs={"rule": rule}))
    >>> best_trial(study).number  # the final phase's network, though trial 1 validated lower
    2
    """
    final = None if is_multi_objective(study) else final_trial(study)
    if final is not None:
        return final
    candidates = study.best_trials if is_multi_objective(study) else study.get_trials(states=(TrialState.COMPLETE,))
    if not candidates:
        raise StudyError(f"study {study.study_name!r} has no completed trial")
    metric = study_metric(study)
    return min(candidates, key=lambda t: (selection_score(t, metric), t.number))


def find_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial ``number``, or the best one when None; unknown numbers raise StudyError.

    >>> import optuna
    >>> from optuna.trial import create_trial
    >>> study = optuna.create_study(study_name="demo")
    >>> study.add_trial(create_trial(value=0.1, user_attrs={"rule": "seed"}))
    >>> find_trial(study, None).user_attrs["rule"]
    'seed'
    >>> find_trial(study, 3)
    Traceback (most recent call last):
    morphnas.errors.StudyError: study 'demo' has no trial 3 (it has 1)
    """
    if number is None:
        return best_trial(study)
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise StudyError(f"study {study.study_name!r} has no trial {number} (it has {len(trials)})")
    return trials[number]


def lineage(study: optuna.Study, number: int) -> list[FrozenTrial]:
    """Trials from the seed down to ``number``, following the ``parent`` attributes.

    >>> import optuna
    >>> from optuna.trial import create_trial
    >>> study = optuna.create_study()
    >>> for error, parent in [(0.10, None), (0.08, 0), (0.09, 0), (0.05, 1)]:
    ...     study.add_trial(create_trial(value=error, user_attrs={"parent": parent}))
    >>> [t.number for t in lineage(study, 3)]
    [0, 1, 3]
    """
    trials = study.get_trials(deepcopy=False)
    chain = [trials[number]]
    while (parent := TrialRecord.from_trial(chain[-1]).parent) is not None:
        chain.append(trials[parent])
    return chain[::-1]


def failure_reason(trial: FrozenTrial) -> str | None:
    """Why ``trial`` did not complete, as recorded; a FAIL trial that records no reason was
    running when its driver was killed (marked FAIL by the next resume).

    >>> from optuna.trial import TrialState, create_trial
    >>> failure_reason(create_trial(state=TrialState.PRUNED, user_attrs={"reason": "over max_macs"}))
    'over max_macs'
    >>> failure_reason(create_trial(state=TrialState.FAIL))
    'interrupted: the search stopped while this child was running'
    """
    return TrialRecord.from_trial(trial).reason


COLUMNS = [*FIELDS, "test_error"]


def trials_frame(study: optuna.Study) -> pandas.DataFrame:
    """One row per trial, one column per field of its :class:`~morphnas.search.record.TrialRecord`
    and ``test_error`` (measured at the end of the search, for its best trials only).

    >>> import optuna
    >>> from optuna.trial import create_trial
    >>> study = optuna.create_study()
    >>> study.add_trial(create_trial(value=0.10, user_attrs={"rule": "seed"}))
    >>> widen = {"name": "widen", "site": "c1_relu", "params": {"factor": 2.0}}
    >>> study.add_trial(create_trial(value=0.08, user_attrs={"rule": "widen", "parent": 0, "morphs": [widen]}))
    >>> frame = trials_frame(study)
    >>> list(frame.columns) == COLUMNS, len(frame)
    (True, 2)
    >>> frame.loc[1, "rule"], frame.loc[1, "morphs"][0]["site"], frame["val_error"].tolist()
    ('widen', 'c1_relu', [0.1, 0.08])
    """
    rows = [{**dataclasses.asdict(TrialRecord.from_trial(t)), "test_error": test_error(study, t.number)}
            for t in study.get_trials(deepcopy=False)]
    import pandas as pd  # only tables need it: `morphnas studies list` starts without it

    return pd.DataFrame(rows, columns=COLUMNS)


def load_trials(storage: str, study: str) -> pandas.DataFrame:
    """The trials of ``study`` in ``storage`` (a URL) as a pandas DataFrame (:func:`trials_frame`).

    >>> import tempfile
    >>> import optuna
    >>> from optuna.trial import create_trial
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     url = f"sqlite:///{tmp}/runs.db"
    ...     study = optuna.create_study(study_name="demo", storage=url)
    ...     study.add_trial(create_trial(value=0.1, user_attrs={"rule": "seed", "params": 1234}))
    ...     frame = load_trials(url, "demo")
    >>> frame[["number", "state", "rule", "val_error", "params"]].to_dict("records")
    [{'number': 0, 'state': 'COMPLETE', 'rule': 'seed', 'val_error': 0.1, 'params': 1234}]
    """
    return trials_frame(load_study(open_storage(storage), study))


def trial_checkpoint(study: optuna.Study, trial: FrozenTrial) -> Path:
    """The checkpoint directory of a completed trial; StudyError for a trial that has none."""
    record = TrialRecord.from_trial(trial)
    if trial.state != TrialState.COMPLETE or record.checkpoint is None:
        raise StudyError(
            f"trial {trial.number} of {study.study_name!r} is {trial.state.name} and has no checkpoint"
            + (f" ({record.reason})" if record.reason else "")
        )
    return Path(study.user_attrs["workdir"]) / record.checkpoint


def test_error(study: optuna.Study, number: int) -> float | None:
    """The test error recorded for trial ``number`` at the end of the search (best trials only)."""
    return study.user_attrs.get(f"test_error/{number}")
