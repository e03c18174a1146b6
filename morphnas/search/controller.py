"""The search controller: generations of morphed children, fine-tuned by an executor.

Trial 0 is the seed network (trained first). Each generation selects parents from the best
lineages, asks Optuna for each child's descriptor (define-by-run), morphs the parent through
the grammar, measures the preservation error, prunes children over the cost limits before any
training, hands the rest to the executor, and tells Optuna the results. A final phase then
trains the best network on with a learning rate that decays to zero, as NASH and the 2017
paper's ResNet experiments do: a child inherits its parent's training, but only the final
phase gives it the convergence a network trained from scratch gets. A time budget is split
across the three phases (:mod:`morphnas.search.budget`). The study and the work directory are
the whole state: a killed search resumes from them without repeating or losing a finished child.
Strategies are objects, as Optuna takes samplers: :class:`SearchOptions` carries the executor
(where children train; default in-process) and the sampler; names are turned into them at the
edge (the CLI), so a new executor is one class and no edit here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from morphnas.errors import CheckpointError, ConfigError, MorphnasError, SearchInterrupted, StudyError
from morphnas.execute import ChildJob, ChildResult, DatasetSpec, Executor, LocalExecutor, child_seed
from morphnas.grammar.rules import Descriptor, get_rule
from morphnas.grammar.sampling import suggest_descriptor, suggest_value
from morphnas.grammar.space import Overrides, Range, SearchSpace, parse_space
from morphnas.ir import ArchGraph, compile_graph, cost, init_weights
from morphnas.morph import verify
from morphnas.search.budget import MIN_EPOCH_SHARE, fit_generation, generation_work, plan_budget
from morphnas.search.lease import DriverLease
from morphnas.search.lineages import make_selector, may_parent
from morphnas.search.record import SCHEMA_KEY, TRIAL_SCHEMA, TrialRecord, record_on, trial_schema
from morphnas.search.seeds import seed_network
from morphnas.search.study import (
    INTERRUPTED,
    best_trial,
    default_storage,
    final_trial,
    is_multi_objective,
    lineage,
    open_storage,
    ranking_key,
    selection_score,
    shown_url,
    study_names,
    val_error,
)
from morphnas.train import Dataset, TrainConfig, evaluate, load_checkpoint, load_dataset, save_checkpoint

Event = Callable[[str, dict[str, Any]], None]
CALIBRATION_IMAGES = 256
CONTROL = "control"  # the rule of a generation's unmorphed child (``selection.control``)
GROWTH = 1.25  # a child's cost as a multiple of its parent's, for planning a generation before it is morphed
REASKS = 8  # how often a slot asks again for a descriptor that repeats one its parent already had
UNSAVED = "CheckpointError: "  # the reason of a child whose checkpoint could not be written (its slot is redone)
REPEATS = "repeats trial "  # the reason of a trial whose descriptor its parent already had (not trained)


@dataclass
class SearchOptions:
    """How to run a search; ``space`` is ignored on ``resume`` (the study keeps its own, changed
    by the budget ``overrides`` given again)."""

    space: SearchSpace
    workdir: Path = Path("runs")
    storage: str | None = None
    study: str | None = None
    executor: Executor | None = None  # default: children one after another in this process, on all torch threads
    seed: int = 0
    resume: bool = False
    force: bool = False  # resume even while another driver's lease is fresh (a driver known to be gone)
    overrides: Overrides = field(default_factory=Overrides)  # the command line's values over the space's
    device: str = "cpu"
    sampler: optuna.samplers.BaseSampler | None = None  # default: TPE seeded with ``seed``
    inherit: bool = True  # False: every child starts from fresh random weights (learning from scratch)


@dataclass
class SearchSummary:
    study: str
    storage: str
    best_trial: int
    val_error: float
    test_error: float
    seed_val_error: float
    seed_test_error: float
    params: int
    macs: int
    n_trials: int
    n_failed: int
    lineage: list[int]
    checkpoint: str
    seconds: float
    pareto_front: list[dict[str, Any]] | None = None  # multi-objective: trial, val_error and costs, by error

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Search:
    """One search, new or resumed; :meth:`run` carries it to the end of its budget."""

    def __init__(self, options: SearchOptions, on_event: Event | None = None) -> None:
        self.created = time.monotonic()  # the budget counts from here: loading the data is part of it
        self.options = options
        self.on_event = on_event or (lambda kind, info: None)
        self.workdir = Path(options.workdir).resolve()
        self.storage_url = options.storage or default_storage(self.workdir)
        if self.workdir.exists() and not self.workdir.is_dir():
            raise ConfigError(f"--workdir {str(options.workdir)!r} is a file, not a directory")
        if options.storage is None or not options.resume:  # a resumed study keeps its own work directory
            try:
                self.workdir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"--workdir {str(options.workdir)!r} cannot be created: {err.strerror}") from None
        # a new search checks its space and loads its data and seed network first: bad ones fail before any study
        # is created; a resumed study keeps the space it was started with, changed by budget flags given again
        fresh = None if options.resume else options.overrides.apply(options.space, options.space.name)
        selector = None if fresh is None else make_selector(fresh.selection)
        self.storage = open_storage(self.storage_url)
        data = None if fresh is None else _load_data(fresh)
        self.seed_network = None if fresh is None else self._seed_network(fresh, data, options.seed)
        self.study, self.lease = self._open_study(fresh)
        attrs = self.study.user_attrs
        self.space = fresh if fresh is not None else options.overrides.apply(
            parse_space(_stored_space(attrs["space"]), f"study {self.study.study_name!r}"), "the flags", resume=True)
        # the strategies the space names (a resumed study's: the ones it was started with)
        self.study.pruner = _pruner(self.space)
        self.selector = selector or make_selector(self.space.selection)
        self.inherit = bool(attrs.get("inherit", True))
        self.data = _load_data(self.space) if data is None else data  # a resumed study's own data set
        self.seed = int(attrs["seed"])
        self.trial_dir = Path(attrs["workdir"]) / "studies" / self.study.study_name / "trials"
        self.live: dict[int, optuna.Trial] = {}
        self.unsaved: str | None = None  # a checkpoint write's error: the search stops after the rung
        if options.resume:
            self._recover()
        missing = [r.number for r in self._records() if r.done and not self._checkpoint_dir(r.number).is_dir()]
        if missing:  # refuse up front rather than fail every child of a missing parent
            raise StudyError(f"cannot resume {self.study.study_name!r}: the checkpoints of trials {missing[:5]} are "
                             f"missing under {self.trial_dir} (was the work directory moved or deleted?)")
        ds = self.space.dataset
        self.dataset_spec = DatasetSpec(ds.name, ds.data_root, ds.split_seed, ds.augment, ds.image_size)
        self.calibration = self.data.train.x[:CALIBRATION_IMAGES]
        self.executor = options.executor or LocalExecutor(cpus_per_child=torch.get_num_threads())
        self.epochs_done: dict[int, int] = {}  # epochs of a child's earlier rungs (successive halving)
        self.epochs_planned: dict[int, float | None] = {}  # the epochs of a network's run (its rung), if known
        self.pace: float | None = None  # seconds of the machine per child-epoch and MAC, last measured
        self.signals: list[int] = []  # SIGINT and SIGTERM received while the search runs
        # a resumed search goes on from the time its earlier drivers had spent when their last trial ended
        self.started = self.created - float(self.study.user_attrs.get("seconds_spent", 0.0))
        b = self.space.budget
        final_share = b.final_share if self.space.final and len(self.space.objectives) == 1 else 0.0
        self.plan = plan_budget(self.started, b.time_budget, b.seed_share, final_share)

    # study --------------------------------------------------------------------------------
    def _open_study(self, space: SearchSpace | None) -> tuple[optuna.Study, DriverLease]:
        """The study to run, a new one of ``space`` or (None) the one to resume, and its lease, taken."""
        o = self.options
        names = study_names(self.storage)
        if space is None:
            if o.study is None:
                raise StudyError("--resume needs --study NAME (see `morphnas studies list`)")
            if o.study not in names:
                raise StudyError(f"cannot resume: no study named {o.study!r} in {shown_url(self.storage_url)}")
            study = optuna.load_study(study_name=o.study, storage=self.storage, sampler=o.sampler)
            trial_schema(study)  # a study written in a newer format is refused before anything is written
            lease = DriverLease(study)
            lease.acquire(force=o.force)  # before touching any trial: another driver may be running it
            study.sampler = self._sampler(int(study.user_attrs["seed"]), len(study.trials))
            return study, lease
        name = o.study or f"{space.name}-{datetime.now():%Y%m%d-%H%M%S}"
        if name in names:
            raise StudyError(f"study {name!r} already exists; pass --resume to continue it, or another --study")
        study = optuna.create_study(
            study_name=name,
            storage=self.storage,
            directions=["minimize"] * len(space.objectives),
            sampler=self._sampler(o.seed, 0),
        )
        study.set_user_attr("space", space.model_dump(mode="json"))
        study.set_user_attr("seed", o.seed)
        study.set_user_attr("workdir", str(self.workdir))
        study.set_user_attr("inherit", o.inherit)
        study.set_user_attr(SCHEMA_KEY, TRIAL_SCHEMA)
        lease = DriverLease(study)
        lease.acquire()
        return study, lease

    def _sampler(self, seed: int, trials: int) -> optuna.samplers.BaseSampler:
        """The sampler passed in, else TPE seeded with the study's ``seed`` and, on a resume, the
        number of ``trials`` already in it: a resumed sampler goes on with a new random stream
        (the same one for the same study), not with the one its first driver began with, whose
        suggestions the study already holds."""
        if trials:
            seed = int(numpy.random.SeedSequence((seed, trials)).generate_state(1)[0])
        return self.options.sampler or optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)

    def _recover(self) -> None:
        """Settle the trials a killed driver left RUNNING. A child whose result was recorded
        (:meth:`_save`: checkpoint written, then ``rung`` set last) is told as it stood then:
        COMPLETE with that rung's validation error (with successive halving, a child that may
        have trained on in the next rung ends at the rung it finished, which the halving could
        no longer rank). Any other becomes FAIL interrupted (:meth:`_settle`), and its slot is redone."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self._settle(optuna.Trial(self.study, trial._trial_id))

    def _settle(self, trial: optuna.Trial) -> None:
        """Tell a trial its driver stopped (or was killed) in: COMPLETE with the result in its
        checkpoint if :meth:`_save` saved one (written atomically with its weights, it is right
        even when the driver died between writing a later rung's checkpoint and its attributes),
        else FAIL interrupted, with any checkpoint it was writing removed."""
        directory = self._checkpoint_dir(trial.number)
        if TrialRecord.from_trial(trial).rung is not None:
            with contextlib.suppress(CheckpointError):
                _, _, metrics = load_checkpoint(directory)
                record_on(trial, val_error=metrics["val_error"], val_loss=metrics["val_loss"],
                          history=metrics["history"])
                self._complete(trial)
                return
        for path in [directory, *directory.parent.glob(f".{directory.name}.*")]:
            shutil.rmtree(path, ignore_errors=True)
        record_on(trial, reason=INTERRUPTED)
        self.study.tell(trial, state=TrialState.FAIL)

    def _objectives(self, record: TrialRecord) -> list[float]:
        """A trial's objective values: its validation error, then its costs the space names."""
        return [float(record.val_error)] + [float(getattr(record, name)) for name in self.space.objectives[1:]]

    # the search ---------------------------------------------------------------------------
    def run(self) -> SearchSummary:
        """The search to the end of its budget; on Ctrl-C or SIGTERM the children in flight are
        marked interrupted and :class:`SearchInterrupted` says how to resume."""
        try:
            with self.lease, _interrupting(self.signals):
                return self._run()
        except KeyboardInterrupt as stop:
            for trial in list(self.live.values()):
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # told just before
                    self._settle(trial)
            signum = signal.SIGTERM if isinstance(stop, _Terminated) else signal.SIGINT
            raise SearchInterrupted(f"interrupted; resume with `{self._resume_command()}`", int(signum)) from None

    def _resume_command(self) -> str:
        o = self.options
        words = ["morphnas search", f"--study {self.study.study_name}", "--resume"]
        if o.storage is not None:
            words.append(f"--storage {shown_url(o.storage)}")
        elif Path(o.workdir) != Path("runs"):
            words.append(f"--workdir {o.workdir}")
        return " ".join(words)

    def _run(self) -> SearchSummary:
        self._train_seed()
        # once the final phase has started, a resume goes on with it, not with more children;
        # otherwise with the last generation it had begun, so generations keep counting
        records = self._records()
        final_started = any(r.rule == "final" for r in records)
        generations = 0 if final_started else self.space.budget.generations
        begun = max((r.generation or 0 for r in records), default=0)
        for generation in range(max(1, begun), generations + 1):
            if not self._generation(generation, self.plan.generations_until):
                break
        self._final_phase()
        return self._summary(time.monotonic() - self.started)

    def _seed_network(self, space: SearchSpace, data: Dataset, seed: int
                      ) -> tuple[ArchGraph, dict[str, torch.Tensor]]:
        """The space's seed network and its first weights; each change made to fit it to the data
        set (a torchvision network's grey input or head) is said in a ``note`` event."""
        s = space.seed
        options = {"shortcut": s.shortcut} if s.arch.startswith("resnet") else {}
        built = seed_network(s.arch, data.input_shape, data.num_classes, dataset=data.name, seed=seed,
                             weights=s.weights, **options)
        for note in built.notes:
            self.on_event("note", {"message": f"seed {s.arch}: {note}"})
        return built.graph, built.weights

    def _train_seed(self) -> None:
        if any(val_error(t) < math.inf for t in self._trials() if TrialRecord.from_trial(t).generation == 0):
            return
        s, plan = self.space.seed, self.plan
        graph, weights = self.seed_network or self._seed_network(self.space, self.data, self.seed)  # a resumed one's
        child_cost = cost(graph)
        trial = self._new_trial(generation=0, parent=None, rule="seed", morphs=[], params=child_cost["params"],
                                macs=child_cost["macs"])
        config = TrainConfig(
            epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, seed=self.seed, device=self.options.device,
            deadline=_wall(plan.seed_until), cycle=(0.0, plan.seed_share) if self._lineage_schedule else (0.0, 1.0),
        )
        self.on_event("seed", {"trial": trial.number, "arch": s.arch, "epochs": s.epochs,
                               "seconds": plan.seed_seconds})
        self._train_alone(trial, graph, weights, child_cost, config)
        seed = TrialRecord.from_trial(self.study.trials[trial.number])
        if seed.state != TrialState.COMPLETE.name:
            raise MorphnasError(f"the seed network failed to train: {seed.reason}")
        tested = time.monotonic()
        self._test_error(trial.number)  # now, so the summary's reserve can be sized by it
        with _signals_deferred(self.signals):
            self.study.set_user_attr("test_seconds_per_mac", (time.monotonic() - tested) / max(1, child_cost["macs"]))

    def _generation(self, generation: int, deadline: float) -> bool:
        """Run generation ``generation`` in the size that ends by ``deadline`` (a monotonic
        time); False when not even a shortened one fits, which ends the generations."""
        trials = self._trials()
        records = {t.number: TrialRecord.from_trial(t) for t in trials}
        done = [r for r in records.values() if r.generation == generation and not _redone(r) and r.rule != "final"]
        slots = self.space.budget.children - len(done)
        if slots <= 0:
            return True
        pareto = {t.number for t in self.study.best_trials} if is_multi_objective(self.study) else None
        candidates = [t for t in trials if records[t.number].rule != "final"
                      and (records[t.number].generation or 0) < generation]  # parents come from before
        if self._lineage_schedule:
            candidates = _frontier(candidates)
        fit = self._fit(generation, slots, candidates, deadline)
        if fit is None:
            return False
        slots, share, seconds = fit
        parents = self.selector.select(may_parent(candidates), slots, self._score, pareto)
        control = self.space.selection.control and all(r.rule != CONTROL for r in done)
        self.on_event("generation", {"generation": generation, "children": len(parents),
                                     "epochs": self._finetune_epochs() * share, "seconds": seconds})
        jobs, pending = [], {}
        for slot, parent in enumerate(parents):
            if time.monotonic() >= deadline:
                break
            with _signals_deferred(self.signals):  # a signal stops the search between two study writes
                made = self._make_child(generation, parent, deadline, share, control=control and slot == 0)
            if made is not None:
                job, graph, child_cost = made
                jobs.append(job)
                pending[job.key] = (graph, child_cost)
        self._rungs(jobs, pending, generation, deadline)
        return True

    def _finetune_epochs(self) -> float:
        """A child's fine-tuning epochs (the most a range allows), before any share of them."""
        epochs = self.space.finetune.epochs
        return epochs.high if isinstance(epochs, Range) else epochs

    def _fit(self, generation: int, slots: int, candidates: list[FrozenTrial], deadline: float
             ) -> tuple[int, float, float | None] | None:
        """The children and the share of their epochs that fit before ``deadline``
        (:func:`~morphnas.search.budget.fit_generation`), said in one line when that is less
        than the space asks for, and the seconds the generation is planned to take, every rung,
        at the pace measured so far (None without parents); None, also said, when nothing fits."""
        eta, epochs = self.space.finetune.halving, self._finetune_epochs()
        left = deadline - time.monotonic()
        if not candidates:
            return slots, 1.0, None
        epoch_seconds = self._pace() * GROWTH * max(TrialRecord.from_trial(t).macs or 0 for t in candidates)
        fit = (slots, 1.0) if math.isinf(left) else fit_generation(slots, epochs, eta, epoch_seconds, left)
        if fit is None:
            self.on_event("budget", {"message": f"time budget: the {left:.0f} s left before the final phase do not "
                                                f"fit generation {generation}; the final phase starts"})
            return None
        children, share = fit
        if (children, share) != (slots, 1.0):
            self.on_event("budget", {"message": f"time budget: generation {generation} shortened to fit the "
                                                f"{left:.0f} s left: {children} children at {share:.0%} of their "
                                                f"epochs"})
        return children, share, generation_work(children, epochs, eta) * share * epoch_seconds

    def _pace(self) -> float:
        """Seconds of the machine per child-epoch and MAC: the last rung's, else the seed's."""
        if self.pace is None:
            seed = self._seed_record()
            epochs = seed.epochs or len(seed.history or []) or 1
            self.pace = float(seed.seconds or 0.0) / epochs / max(1, seed.macs)
        return self.pace

    def _rungs(self, jobs: list[ChildJob], pending: dict[int, tuple[ArchGraph, dict]], generation: int,
               deadline: float) -> None:
        """Train a generation's children; with ``finetune.halving`` (eta) as successive halving:
        after each rung only the best ``ceil(n / eta)`` train on, for eta times the epochs, from
        their own weights; the rest end as pruned trials. Without it, one rung, every child.
        A rung that would not end by ``deadline`` is shortened, or not started: then every
        child of the rung before ends as it is.

        Each child's result is kept the moment it arrives, so a killed search loses no finished
        child: one that failed, was pruned or (without halving) trained to its end is told to the
        study at once (:meth:`_finish`); with halving, a child that finished a rung has its
        checkpoint saved and its rung's result recorded while its trial stays RUNNING
        (:meth:`_save`), and is told once the rung is ranked: PRUNED if halved out, COMPLETE
        after the last rung (a resume completes it at the rung it finished: :meth:`_recover`).
        A checkpoint that cannot be written fails its child alone; the generation's other
        children end as they are after the rung, and then :class:`CheckpointError` stops the
        search (the disk is full)."""
        eta = self.space.finetune.halving
        runs: dict[int, ChildResult] = {}  # each child's rungs so far, joined
        for rung in itertools.count():
            started, work = time.monotonic(), 0.0
            self.epochs_planned.update((job.key, job.train.epochs) for job in jobs)
            for result in self.executor.run(jobs, on_epoch=self._on_epoch):
                joined = runs[result.key] = _joined(runs.get(result.key), result)
                work += result.epochs_trained * pending[result.key][1]["macs"]
                if eta is None or joined.status != "ok":
                    self._finish(self.live[result.key], *pending[result.key], joined)
                else:
                    with _signals_deferred(self.signals):
                        self._save(self.live[result.key], *pending[result.key], joined, rung + 1)
            if work > 0:
                self.pace = (time.monotonic() - started) / work
            ranked = sorted((runs[j.key] for j in jobs if j.key in self.live), key=self._result_score)
            keep = len(ranked) if eta is None or len(ranked) <= 1 or self.unsaved else math.ceil(len(ranked) / eta)
            share = 1.0
            if keep < len(ranked):
                rung_work = keep * eta * max(j.train.epochs for j in jobs) * max(
                    pending[r.key][1]["macs"] for r in ranked[:keep]) * self._pace()
                share = min(1.0, (deadline - time.monotonic()) / rung_work)
                if share < MIN_EPOCH_SHARE:
                    self.on_event("budget", {"message": f"time budget: generation {generation} ends after rung "
                                                        f"{rung + 1}; its {len(ranked)} children end as they are"})
                    keep = len(ranked)
            for result in ranked[keep:]:
                self._halve_out(result, rung, keep, len(ranked))
            if keep == len(ranked):
                for result in ranked:
                    with _signals_deferred(self.signals):
                        self._tell(self.live[result.key], result, TrialState.COMPLETE)
                self._stop_if_unsaved()
                return
            jobs = [self._next_rung(job, runs[job.key], rung + 1, eta * share, generation) for job in jobs
                    if job.key in {r.key for r in ranked[:keep]}]

    def _next_rung(self, job: ChildJob, result: ChildResult, rung: int, factor: float, generation: int) -> ChildJob:
        """``job``'s child trained on from its weights for ``factor`` times the epochs (a warm
        restart, or with the lineage schedule, at the lineage's rate of now)."""
        self.epochs_done[job.key] = len(result.history)
        config = dataclasses.replace(job.train, epochs=job.train.epochs * factor, seed=self.seed + rung)
        if self._lineage_schedule:
            config = dataclasses.replace(config, cycle=(self._position(generation),) * 2)
        return dataclasses.replace(job, weights=result.weights, train=config)

    def _halve_out(self, result: ChildResult, rung: int, kept: int, ranked: int) -> None:
        """A child ranked out after rung ``rung``: PRUNED, with the result and checkpoint :meth:`_save` recorded."""
        with _signals_deferred(self.signals):
            trial = self.live[result.key]
            record_on(trial, reason=f"halved out after rung {rung + 1}: not among the best {kept} of {ranked}")
            self._tell(trial, result, TrialState.PRUNED)

    def _make_child(self, generation: int, parent: FrozenTrial, deadline: float, share: float = 1.0,
                    control: bool = False) -> tuple[ChildJob, ArchGraph, dict] | None:
        """Ask a trial, morph the parent per its descriptor; None when the child is pruned or failed.
        A ``control`` child is the parent unmorphed (rule ``control``), trained on like its siblings.
        It trains ``share`` of its epochs and stops by ``deadline`` (a monotonic time)."""
        asked = self._ask_child(generation, parent, control)
        if asked is None:
            return None
        trial, descriptor = asked
        number = trial.number
        try:
            ft = self.space.finetune
            lr = self.space.seed.lr if self._lineage_schedule else suggest_value(trial, "finetune.lr", ft.lr)
            epochs = suggest_value(trial, "finetune.epochs", ft.epochs) if isinstance(ft.epochs, Range) else ft.epochs
            rule = CONTROL if descriptor is None else descriptor.rule
            record_on(trial, rule=rule)
            arch, weights, _ = load_checkpoint(self._checkpoint_dir(parent.number))
            parent_graph = ArchGraph.from_json(arch)
            if descriptor is None:
                graph, child_weights = parent_graph, weights
                record_on(trial, morphs=[])
            else:
                record_on(trial, descriptor=descriptor.to_json())
                result = get_rule(rule).apply(
                    parent_graph, weights, descriptor, seed=child_seed(self.seed, number), calibration=self.calibration
                )
                graph, child_weights = result.graph, result.weights
                record_on(trial, morphs=[result.record.to_json()], exact=result.exact)
            child_cost = cost(graph)
            record_on(trial, params=child_cost["params"], macs=child_cost["macs"])
            over = _over_limits(self.space, child_cost)
            if over:
                record_on(trial, reason=over)
                self.study.tell(self.live.pop(number), state=TrialState.PRUNED)
                self.on_event("pruned", {"trial": number, "reason": over})
                return None
            if not self.inherit:  # learning from scratch: the child's architecture, fresh weights
                record_on(trial, inherit=False)
                child_weights = init_weights(graph, child_seed(self.seed, number))
            elif descriptor is not None:
                check = verify(parent_graph, weights, graph, child_weights, inputs=[self.calibration[:64]])
                record_on(trial, preservation_error=check.max_rel_err, train_preservation_error=check.train_max_rel_err)
        except MorphnasError as err:
            record_on(trial, reason=f"{type(err).__name__}: {err}")
            self.study.tell(self.live.pop(number), state=TrialState.FAIL)
            self.on_event("failed", {"trial": number, "reason": str(err)})
            return None
        if self._lineage_schedule:  # the lineage's rate of now, held for the rung
            schedule, cycle = "cosine", (self._position(generation),) * 2
        else:
            schedule, cycle = ft.schedule, (0.0, 1.0)
        config = TrainConfig(
            epochs=epochs * share, lr=lr, batch_size=ft.batch_size, weight_decay=ft.weight_decay, schedule=schedule,
            warmup_epochs=0.0, seed=self.seed, device=self.options.device, cycle=cycle,
            deadline=_wall(deadline),
        )
        self.on_event("child", {"trial": number, "parent": parent.number, "rule": rule})
        job = ChildJob(number, graph.to_json(), child_weights, config, self.dataset_spec)
        return job, graph, child_cost

    def _ask_child(self, generation: int, parent: FrozenTrial, control: bool
                   ) -> tuple[optuna.Trial, Descriptor | None] | None:
        """A new trial of ``parent``'s in ``generation`` and its descriptor (None for a control
        child). A descriptor ``parent`` already had in a trial that trained (every one but those
        whose slot is redone) is asked again on a new trial, up to ``REASKS`` times: each repeat
        is told PRUNED, untrained, with the trial it repeats as reason, and does not take a
        slot. None when every ask repeated one."""
        trained = {_key(r.descriptor): r.number for r in self._records()
                   if r.parent == parent.number and r.descriptor is not None and not _redone(r)}
        for _ in range(REASKS):
            trial = self._new_trial(generation=generation, parent=parent.number)
            descriptor = None if control else suggest_descriptor(trial, self.space.rules)
            repeat = None if descriptor is None else trained.get(_key(descriptor.to_json()))
            if repeat is None:
                return trial, descriptor
            with _signals_deferred(self.signals):
                record_on(trial, rule=descriptor.rule,
                          reason=f"{REPEATS}{repeat}: the same parent and descriptor; not trained")
                self.study.tell(self.live.pop(trial.number), state=TrialState.PRUNED)
            self.on_event("pruned", {"trial": trial.number, "reason": f"{REPEATS}{repeat}"})
        return None

    def _final_phase(self) -> None:
        """Train the best network on, from its own weights, with a cosine decay to zero; its
        trial (rule ``final``, parent the chosen network) becomes the search's result. Without
        weight inheritance it starts from fresh weights, like every child of such a search.
        Multi-objective searches skip it: their result is a Pareto front, not one network; so
        does a search whose generations left it no time (the trainer keeps any deadline to a
        step). It keeps back 1.5 times the time the seed's test took, scaled by
        MACs, for the summary."""
        f = self.space.final
        if f is None or is_multi_objective(self.study) or final_trial(self.study) is not None:
            return
        done = may_parent(self._trials())
        if self._lineage_schedule:
            done = _frontier(done)
        parent = min(done, key=lambda t: (self._score(t), t.number))
        chosen = TrialRecord.from_trial(parent)
        reserve = 1.5 * self.study.user_attrs.get("test_seconds_per_mac", 0.0) * chosen.macs
        seconds = self.plan.final_seconds(time.monotonic(), reserve)
        if seconds is not None and seconds <= 0:
            self.on_event("budget", {"message": "time budget: no time left for the final phase"})
            return
        arch, weights, _ = load_checkpoint(self._checkpoint_dir(parent.number))
        graph = ArchGraph.from_json(arch)
        child_cost = cost(graph)
        trial = self._new_trial(generation=chosen.generation + 1, parent=parent.number, rule="final", morphs=[],
                                inherit=self.inherit, params=child_cost["params"], macs=child_cost["macs"])
        if not self.inherit:
            weights = init_weights(graph, child_seed(self.seed, trial.number))
        lr, cycle = f.lr, (0.0, 1.0)
        if self._lineage_schedule:  # the lineage's cycle to its end; a fresh network gets a whole one
            lr = self.space.seed.lr
            cycle = (self.plan.position(time.monotonic(), 1.0) if self.inherit else 0.0, 1.0)
        config = TrainConfig(
            epochs=f.epochs, lr=lr, batch_size=f.batch_size, weight_decay=f.weight_decay, seed=self.seed,
            device=self.options.device, deadline=_wall(time.monotonic() + seconds) if seconds is not None else None,
            cycle=cycle,
        )
        self.on_event("final", {"trial": trial.number, "parent": parent.number, "epochs": f.epochs,
                                "seconds": seconds})
        self._train_alone(trial, graph, weights, child_cost, config)

    def _train_alone(self, trial: optuna.Trial, graph: ArchGraph, weights: dict[str, torch.Tensor],
                     child_cost: dict[str, Any], config: TrainConfig) -> None:
        """Train the seed's or the final phase's ``trial`` (no pruner) and tell its result."""
        job = ChildJob(trial.number, graph.to_json(), weights, config, self.dataset_spec)
        self.epochs_planned[job.key] = config.epochs if config.deadline is None else None  # the budget decides
        for result in self.executor.run([job], on_epoch=self._never_pruned):
            self._finish(trial, graph, child_cost, result)
        self._stop_if_unsaved()

    @property
    def _lineage_schedule(self) -> bool:
        return self.space.finetune.schedule == "lineage"

    def _position(self, generation: int) -> float:
        """Where generation ``generation``'s lineages are on their learning-rate cycle now."""
        return self.plan.position(time.monotonic(), (generation - 1) / self.space.budget.generations)

    def _spent(self) -> None:
        """Record the search's time so far: a resume's budget goes on from here."""
        self.study.set_user_attr("seconds_spent", round(time.monotonic() - self.started, 3))

    def _score(self, trial: FrozenTrial) -> tuple[int, float]:
        return selection_score(trial, self.space.selection.metric)

    def _result_score(self, result: ChildResult) -> tuple[int, float]:
        """:func:`selection_score` of a child not yet told to the study."""
        return ranking_key(self.space.selection.metric, result.val_error, result.val_loss)

    def _stop_if_signalled(self) -> None:
        """Raise a SIGINT or SIGTERM received earlier whose exception Python dropped (see
        :func:`_interrupting`)."""
        _raise_caught(self.signals)

    def _never_pruned(self, key: int, epoch: int, error: float) -> bool:
        """The seed's and the final phase's epoch callback: it stops the search on a signal,
        never the network."""
        self._stop_if_signalled()
        self._epoch_event(key, epoch, error)
        return True

    def _on_epoch(self, key: int, epoch: int, error: float) -> bool:
        self._stop_if_signalled()
        self._epoch_event(key, epoch, error)
        if is_multi_objective(self.study):
            return True
        trial = self.live[key]
        with _signals_deferred(self.signals):  # never inside the database commit
            trial.report(error, self.epochs_done.get(key, 0) + epoch)
        return not trial.should_prune()

    def _epoch_event(self, key: int, epoch: int, error: float) -> None:
        """The ``epoch`` event: a child's finished epoch of the epochs its run (its rung) trains at
        most, the seconds since the search's start and the budget (None without one), for the
        progress lines."""
        total = self.plan.end - self.plan.start
        self.on_event("epoch", {"trial": key, "epoch": epoch, "epochs": self.epochs_planned.get(key),
                                "val_error": error, "elapsed": time.monotonic() - self.started,
                                "budget": None if math.isinf(total) else total})

    def _new_trial(self, **fields: Any) -> optuna.Trial:
        """A new trial (:meth:`_ask`) with ``fields`` of its :class:`TrialRecord` written on it."""
        trial = self._ask()
        with _signals_deferred(self.signals):
            record_on(trial, **fields)
        return trial

    def _ask(self) -> optuna.Trial:
        """A new trial, live (marked interrupted on Ctrl-C) until it is told. A Ctrl-C or SIGTERM
        during the ask itself waits until the trial is live, so no trial is left running unmarked.
        A driver whose study another one took over (``--force``) stops here, before asking."""
        self.lease.verify()
        with _signals_deferred(self.signals):
            trial = self.study.ask()
            self.live[trial.number] = trial
        return trial

    def _finish(self, trial: optuna.Trial, graph: ArchGraph, child_cost: dict, result: ChildResult) -> None:
        """Tell a child's result to the study: a trained one's checkpoint is saved first
        (:meth:`_save`). A SIGINT or SIGTERM waits until the study is written (it never lands
        inside a database commit) and then stops the search."""
        with _signals_deferred(self.signals):
            if result.status == "ok":
                if self._save(trial, graph, child_cost, result, rung=1):
                    self._tell(trial, result, TrialState.COMPLETE)
                return
            self._record(trial, result)
            reason = result.reason if result.status == "failed" else (
                f"pruned by the pruner after epoch {len(result.history)}")
            record_on(trial, reason=reason)
            self._tell(trial, result, TrialState.FAIL if result.status == "failed" else TrialState.PRUNED)

    def _record(self, trial: optuna.Trial, result: ChildResult) -> None:
        """Record how ``trial``'s child trained (``result``) on its trial."""
        if result.node is not None:
            record_on(trial, node=result.node)
        record_on(trial, history=result.history, seconds=round(result.seconds, 3),
                  epochs=round(result.epochs_trained, 4))

    def _save(self, trial: optuna.Trial, graph: ArchGraph, child_cost: dict, result: ChildResult, rung: int
              ) -> bool:
        """Save a trained child's checkpoint, then record its result (after rung ``rung``) on its
        trial, which stays RUNNING; ``rung`` is set last, so a trial that has it has a checkpoint
        of a finished rung, whose metrics are its result if the driver is killed (:meth:`_settle`).
        False when the checkpoint cannot be written (a full disk): then the child alone is told
        FAIL with the reason, its slot is redone by a resume, and the search stops once the
        running rung is told (:meth:`_stop_if_unsaved`)."""
        directory = self._checkpoint_dir(trial.number)
        metrics = {"val_error": result.val_error, "val_loss": result.val_loss, "history": result.history,
                   "normalisation": {"mean": list(self.data.mean), "std": list(self.data.std)}, **child_cost}
        try:
            save_checkpoint(directory, arch=graph.to_json(), weights=result.weights, metrics=metrics)
        except CheckpointError as err:
            self.unsaved = str(err)
            self._record(trial, result)
            record_on(trial, reason=f"{UNSAVED}{err}")
            self._tell(trial, result, TrialState.FAIL)
            return False
        self._record(trial, result)
        record_on(trial, checkpoint=str(directory.relative_to(self.trial_dir.parents[2])), val_error=result.val_error,
                  val_loss=result.val_loss, rung=rung)  # rung last: see _settle
        return True

    def _complete(self, trial: optuna.Trial) -> None:
        """Tell ``trial``, whose result :meth:`_save` recorded, COMPLETE."""
        self.study.tell(trial, self._objectives(TrialRecord.from_trial(trial)))

    def _tell(self, trial: optuna.Trial, result: ChildResult, state: TrialState) -> None:
        """Tell ``trial`` ``state`` (COMPLETE: with the result :meth:`_save` recorded) and note the time spent."""
        if state == TrialState.COMPLETE:
            self._complete(trial)
        else:
            self.study.tell(trial, state=state)
        self.live.pop(trial.number, None)
        self._spent()
        status = {TrialState.COMPLETE: "ok", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}[state]
        self.on_event("done", {"trial": trial.number, "status": status, "best": self._best_error(),
                               "val_error": None if state == TrialState.FAIL else result.val_error})

    def _stop_if_unsaved(self) -> None:
        """Stop the search, in one line, once a checkpoint could not be written (:meth:`_save`)."""
        if self.unsaved is not None:
            raise CheckpointError(f"{self.unsaved}; the study keeps every finished trial: free space and resume")

    # results ------------------------------------------------------------------------------
    def _trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def _records(self) -> list[TrialRecord]:
        return [TrialRecord.from_trial(t) for t in self._trials()]

    def _seed_record(self) -> TrialRecord:
        """The seed network's trial, completed."""
        return next(r for r in self._records() if r.generation == 0 and r.state == TrialState.COMPLETE.name)

    def _checkpoint_dir(self, number: int) -> Path:
        return self.trial_dir / f"{number:05d}"

    def _best_error(self) -> float:
        return min((val_error(t) for t in self._trials()), default=math.inf)

    def _test_error(self, number: int) -> float:
        """Test error of trial ``number``'s network, recorded in the study (reported, never selected on)."""
        if f"test_error/{number}" in self.study.user_attrs:
            return float(self.study.user_attrs[f"test_error/{number}"])
        arch, weights, _ = load_checkpoint(self._checkpoint_dir(number))
        error = evaluate(compile_graph(ArchGraph.from_json(arch), weights), self.data.test)
        with _signals_deferred(self.signals):
            self.study.set_user_attr(f"test_error/{number}", error)
        return error

    def _summary(self, seconds: float) -> SearchSummary:
        best = best_trial(self.study)
        test_error = self._test_error(best.number)
        records = self._records()
        seed, chosen = self._seed_record(), records[best.number]
        return SearchSummary(
            study=self.study.study_name,
            storage=self.storage_url,
            best_trial=best.number,
            val_error=val_error(best),
            test_error=test_error,
            seed_val_error=seed.val_error,
            seed_test_error=self._test_error(seed.number),
            params=chosen.params,
            macs=chosen.macs,
            n_trials=len(records),
            n_failed=sum(r.state == TrialState.FAIL.name for r in records),
            lineage=[t.number for t in lineage(self.study, best.number)],
            checkpoint=str(self._checkpoint_dir(best.number)),
            seconds=round(seconds, 1),
            pareto_front=[
                {"trial": t.number, "val_error": val_error(t), "params": records[t.number].params,
                 "macs": records[t.number].macs}
                for t in sorted(self.study.best_trials, key=lambda t: (val_error(t), t.number))
            ] if is_multi_objective(self.study) else None,
        )


def _load_data(space: SearchSpace) -> Dataset:
    ds = space.dataset
    return load_dataset(ds.name, data_root=ds.data_root, split_seed=ds.split_seed, augment=ds.augment,
                        image_size=ds.image_size)


def _stored_space(data: dict[str, Any]) -> dict[str, Any]:
    """A study's stored space; one stored before the final phase existed keeps the behaviour it
    was started with on resume (no final phase, no augmentation, selection by error)."""
    if "final" in data:
        return data
    dataset = {**data.get("dataset", {}), "augment": False}
    return {**data, "final": None, "dataset": dataset, "selection": {**data.get("selection", {}), "metric": "error"}}


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler's time limit), stopping a search as Ctrl-C does."""


def _raise_caught(caught: list[int]) -> None:
    """Raise what the first signal in ``caught`` stands for: :class:`_Terminated` for SIGTERM,
    ``KeyboardInterrupt`` for SIGINT; nothing if it is empty."""
    if caught:
        raise _Terminated if caught[0] == signal.SIGTERM else KeyboardInterrupt


@contextlib.contextmanager
def _interrupting(caught: list[int]) -> Iterator[None]:
    """Within the block SIGINT (Ctrl-C) and SIGTERM raise at once, as :func:`_raise_caught` says,
    and are noted in ``caught`` (main thread only). A signal that lands in a weakref callback or a
    ``__del__`` (SQLAlchemy has some, run by the garbage collector) raises there, where Python drops
    the exception with an "Exception ignored" line, so the search also checks ``caught`` between
    epochs and children (:meth:`Search._stop_if_signalled`) and stops then."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        caught.append(signum)
        _raise_caught([signum])

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_deferred(caught: list[int]) -> Iterator[None]:
    """Note a SIGINT (Ctrl-C) or SIGTERM that arrives inside the block in ``caught`` and raise it
    at the end (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _raise_caught(caught)


def _redone(record: TrialRecord) -> bool:
    """Whether a trial's slot is still to be filled: it was interrupted, its checkpoint could
    not be written, or it repeated a descriptor and was never trained."""
    reason = record.reason or ""
    return reason == INTERRUPTED or reason.startswith((UNSAVED, REPEATS))


def _key(descriptor: dict[str, Any]) -> str:
    """A descriptor's JSON, as the study stores it, for comparing two."""
    return json.dumps(descriptor, sort_keys=True)


def _wall(monotonic: float) -> float | None:
    """The ``time.time()`` of a ``time.monotonic()`` deadline (None for no deadline), as
    children on other processes and machines keep it."""
    return None if math.isinf(monotonic) else time.time() + monotonic - time.monotonic()


def _frontier(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The completed trials of the latest generation that has any: the tips of lineages that
    follow one learning-rate cycle. An older trial is behind on the cycle, and its validation
    loss was measured at another rate, so it is no fair rival of the tips (it was the one
    before: training it on would redo what its children did). Siblings compare on equal terms."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    generation = {t.number: TrialRecord.from_trial(t).generation or 0 for t in done}
    latest = max(generation.values(), default=0)
    return [t for t in done if generation[t.number] == latest]


def _joined(earlier: ChildResult | None, later: ChildResult) -> ChildResult:
    """One child's result over its rungs: the later rung's outcome, the whole history, time and epochs."""
    if earlier is None:
        return later
    return dataclasses.replace(later, history=earlier.history + later.history, seconds=earlier.seconds + later.seconds,
                               epochs=earlier.epochs_trained + later.epochs_trained)


PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {  # by the name a space gives ``finetune.pruner``
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0),
    "none": optuna.pruners.NopPruner,
}


def _pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    """The pruner the space names, which stops children within their epochs; none with
    successive halving (it decides) or several objectives."""
    if len(space.objectives) > 1 or space.finetune.halving is not None:
        return optuna.pruners.NopPruner()
    return PRUNERS[space.finetune.pruner]()


def _over_limits(space: SearchSpace, child_cost: dict[str, Any]) -> str | None:
    limits = space.limits
    if limits.max_params is not None and child_cost["params"] > limits.max_params:
        return f"over limits: params {child_cost['params']} > {limits.max_params}"
    if limits.max_macs is not None and child_cost["macs"] > limits.max_macs:
        return f"over limits: macs {child_cost['macs']} > {limits.max_macs}"
    return None


def run_search(options: SearchOptions, on_event: Event | None = None) -> SearchSummary:
    return Search(options, on_event).run()
