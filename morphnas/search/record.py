"""A trial's record: the one reader and writer of the attributes a search keeps on each trial.

Every child is an Optuna trial; what rebuilds and explains it (parent, morphs, descriptor,
cost, preservation error, how it trained, its checkpoint) is kept in the trial's user
attributes. :class:`TrialRecord` names each of them once, with its type: the controller writes
a trial's fields through :func:`record_on` (one attribute per field, in the order given, so
``rung`` can be written last), and the study's readers, the report, the CLI and a user's pandas
code (:func:`~morphnas.search.study.trials_frame`) read trials through
:meth:`TrialRecord.from_trial`. The study keeps the format's version (:data:`TRIAL_SCHEMA`,
the study attribute ``trial_schema``); a study that has none was written before the version
was stored, in version 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from morphnas.errors import StudyError

TRIAL_SCHEMA = 1  # the version of the attribute format below; a study stores it as ``trial_schema``
SCHEMA_KEY = "trial_schema"
INTERRUPTED = "interrupted: the search stopped while this child was running"
DERIVED = ("number", "state", "duration_s")  # read from the trial itself, never written as attributes


@dataclass(frozen=True)
class TrialRecord:
    """What a search records of one trial; None where the trial has no such attribute.

    >>> from optuna.trial import create_trial
    >>> widen = {"name": "widen", "site": "c1_relu", "params": {"factor": 2.0}}
    >>> trial = create_trial(value=0.08, user_attrs={"generation": 1, "parent": 0, "rule": "widen",
    ...                                              "morphs": [widen], "params": 1234})
    >>> record = TrialRecord.from_trial(trial)
    >>> record.parent, record.val_error, record.morph_text
    (0, 0.08, 'widen@c1_relu')
    >>> record.to_attrs("rule", "params")
    {'rule': 'widen', 'params': 1234}
    """

    number: int | None = None
    state: str | None = None  # the trial's state's name: COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    generation: int | None = None  # 0 for the seed; the final phase's is its parent's + 1
    parent: int | None = None  # the trial this one was morphed from (None for the seed)
    rule: str | None = None  # "seed", a grammar rule, "control" (unmorphed) or "final"
    morphs: list[dict[str, Any]] | None = None  # each applied morph's record (name, site, params)
    descriptor: dict[str, Any] | None = None  # the rule descriptor the sampler chose
    exact: bool | None = None  # whether the morph is function-preserving
    params: int | None = None
    macs: int | None = None
    preservation_error: float | None = None  # the morph's relative output change, in eval mode
    train_preservation_error: float | None = None  # the same in train mode
    inherit: bool = True  # False: the child started from fresh random weights
    val_error: float | None = None  # the first objective once told; before that the last rung's
    val_loss: float | None = None
    history: list[float] | None = None  # validation error after each epoch
    epochs: float | None = None  # epochs trained (fractional when a deadline cut one short)
    seconds: float | None = None  # training time
    rung: int | None = None  # the successive-halving rung whose result (and checkpoint) was saved
    checkpoint: str | None = None  # the checkpoint directory, relative to the study's work directory
    node: str | None = None  # the machine that trained it (Ray)
    reason: str | None = None  # why it did not complete
    duration_s: float | None = None  # from start to end, in seconds

    @classmethod
    def from_trial(cls, trial: FrozenTrial | optuna.Trial) -> TrialRecord:
        """The record of a finished trial (a ``FrozenTrial``) or a live one (an ``optuna.Trial``:
        its attributes only). A FAIL trial that records no reason was running when its driver
        was killed (:data:`INTERRUPTED`)."""
        a = trial.user_attrs
        record = cls(number=trial.number, **{f: a[f] for f in ATTRIBUTES if f in a})
        if not isinstance(trial, FrozenTrial):
            return record
        end = trial.datetime_complete
        return dataclasses.replace(
            record,
            state=trial.state.name,
            val_error=trial.values[0] if trial.values else record.val_error,
            reason=INTERRUPTED if record.reason is None and trial.state == TrialState.FAIL else record.reason,
            duration_s=(end - trial.datetime_start).total_seconds() if end and trial.datetime_start else None,
        )

    def to_attrs(self, *names: str) -> dict[str, Any]:
        """The attributes of the fields ``names`` as given (None too), in that order; without
        names, every field that is not None."""
        if names:
            unknown = set(names) - set(ATTRIBUTES)
            if unknown:
                raise ValueError(f"not trial attributes: {', '.join(sorted(unknown))}")
            return {name: getattr(self, name) for name in names}
        return {name: getattr(self, name) for name in ATTRIBUTES if getattr(self, name) is not None}

    @property
    def morph_text(self) -> str | None:
        """The morphs as ``name@site + ...``; None for a trial without one."""
        return morph_text(self.morphs)

    @property
    def done(self) -> bool:
        """Completed with a checkpoint: a network a generation or the final phase may train on."""
        return self.state == TrialState.COMPLETE.name and bool(self.checkpoint)


ATTRIBUTES = tuple(f.name for f in dataclasses.fields(TrialRecord) if f.name not in DERIVED)
FIELDS = tuple(f.name for f in dataclasses.fields(TrialRecord))


def morph_text(morphs: list[dict[str, Any]] | None) -> str | None:
    """Morph records (a :class:`TrialRecord`'s ``morphs``) as ``name@site + ...``; None for none."""
    if not isinstance(morphs, list):  # None, or a missing value in a table (NaN)
        return None
    return " + ".join(f"{m['name']}@{m['site']}" for m in morphs) or None


def record_on(trial: optuna.Trial, **fields: Any) -> None:
    """Write ``fields`` of a live trial's :class:`TrialRecord` on it, one attribute each, in
    the order given (a reader that sees the last one sees the others)."""
    for key, value in TrialRecord(**fields).to_attrs(*fields).items():
        trial.set_user_attr(key, value)


def trial_schema(study: optuna.Study) -> int:
    """The version of ``study``'s trial format (1 for a study that stores none); StudyError for
    one newer than this morphnas reads."""
    version = int(study.user_attrs.get(SCHEMA_KEY, 1))
    if version > TRIAL_SCHEMA:
        raise StudyError(f"study {study.study_name!r} was written with trial format {version}; this morphnas reads "
                         f"up to {TRIAL_SCHEMA}: upgrade morphnas")
    return version
