"""``morphnas search``: run (or resume) a morphism search."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from morphnas.cli.output import console as make_console
from morphnas.cli.output import duration, plural
from morphnas.cli.progress import Progress
from morphnas.errors import ConfigError, SearchInterrupted
from morphnas.grammar.space import Overrides, load_space, parse_duration

if TYPE_CHECKING:
    from morphnas.execute.base import Executor
    from morphnas.search import SearchSummary

# The executors a user can name (--executor): the search and the executors take and are objects;
# only the command line turns a name into one. A new executor is a class and a line here.
EXECUTORS: tuple[str, ...] = ("local", "processes", "ray")


def make_executor(
    kind: str,
    *,
    cpus_per_child: float = 1,
    gpus_per_child: float = 0,
    ray_address: str | None = None,
    max_concurrent: int | None = None,
    storage_path: str | None = None,
    max_failures: int = 1,
) -> Executor:
    """The executor named ``kind`` (``"local"``, ``"processes"`` or ``"ray"``); anything else
    raises ConfigError.

    ``cpus_per_child`` sets each child's CPUs (Ray) and torch threads (all; see
    :func:`~morphnas.execute.base.threads_for`; ``processes`` runs as many children at once as
    whole ``cpus_per_child`` fit in this machine's cores); ``gpus_per_child > 0`` makes children
    train on ``"cuda"`` (fractional on Ray: 0.25 = four children share a GPU). ``ray_address``, ``max_concurrent``,
    ``storage_path`` and ``max_failures`` concern Ray only and are ignored by ``"local"``; see
    :class:`~morphnas.execute.ray_executor.RayExecutor`.
    """
    if kind == "local":
        from morphnas.execute.local import LocalExecutor

        return LocalExecutor(cpus_per_child=cpus_per_child, gpus_per_child=gpus_per_child)
    if kind == "processes":
        import os

        from morphnas.execute.processes import ProcessExecutor

        cores = len(os.sched_getaffinity(0))
        return ProcessExecutor(workers=max(1, int(cores // max(1.0, cpus_per_child))), gpus_per_child=gpus_per_child)
    if kind == "ray":
        from morphnas.execute.ray_executor import RayExecutor

        return RayExecutor(
            cpus_per_child=cpus_per_child,
            gpus_per_child=gpus_per_child,
            ray_address=ray_address,
            max_concurrent=max_concurrent,
            storage_path=storage_path,
            max_failures=max_failures,
        )
    raise ConfigError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")


class LiveView:
    """A rich live table: generation, children running, finished trials, best so far; under it a
    line per running child (epoch, val error, time) and the phase's and the budget's time left."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.state: dict[str, Any] = {"generation": 0, "finished": 0, "failed": 0, "best": None}
        self.last = ""
        self.progress = Progress(clock)
        self.live = Live(console=console, refresh_per_second=4, transient=False, get_renderable=self._view)

    def _view(self) -> Group:
        table = Table(title="morphnas search", show_header=True)
        for column in ("generation", "children running", "finished", "failed/pruned", "best val error", "last"):
            table.add_column(column)
        best = self.state["best"]
        table.add_row(
            str(self.state["generation"]), str(len(self.progress.children)), str(self.state["finished"]),
            str(self.state["failed"]), "-" if best is None else f"{best:.2%}", self.last,
        )
        return Group(table, *(Text(f"  {line}") for line in self.progress.running()), Text(self.progress.status()))

    def __call__(self, kind: str, info: dict[str, Any]) -> None:
        s = self.state
        self.progress.update(kind, info)
        if kind == "seed":
            self.last = f"training seed {info['arch']} ({_length(info)})"
        elif kind == "final":
            self.last = f"final phase: trial {info['trial']} trains trial {info['parent']} on ({_length(info)})"
        elif kind == "generation":
            s["generation"] = info["generation"]
            self.last = _generation(info)
        elif kind == "child":
            self.last = f"trial {info['trial']}: {info['rule']} of trial {info['parent']}"
        elif kind in ("failed", "pruned"):
            s["failed"] += 1
            self.last = f"trial {info['trial']} {kind}: {info['reason'][:60]}"
        elif kind == "done":
            s["finished" if info["status"] == "ok" else "failed"] += 1
            s["best"] = info["best"] if info["best"] != float("inf") else None
            err = info["val_error"]
            self.last = f"trial {info['trial']} {info['status']}" + ("" if err is None else f", val error {err:.2%}")
        elif kind == "budget":
            self.last = info["message"]
        elif kind == "note":  # said once, above the table, where it stays
            self.live.console.print(info["message"], markup=False, highlight=False)
        self.live.refresh()


class EventLog:
    """One plain line per event, and per finished epoch of each child, for logs and CI (stdout
    is not a terminal)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.progress = Progress(clock)

    def __call__(self, kind: str, info: dict[str, Any]) -> None:
        self.progress.update(kind, info)
        if kind == "seed":
            line = f"training seed {info['arch']} ({_length(info)}) as trial {info['trial']}"
        elif kind == "final":
            line = f"final phase: trial {info['trial']} trains trial {info['parent']} on ({_length(info)})"
        elif kind == "generation":
            line = _generation(info)
        elif kind == "child":
            line = f"  trial {info['trial']}: {info['rule']} of trial {info['parent']}"
        elif kind == "epoch":
            line = f"  {self.progress.child_line(info['trial'])}; {self.progress.status()}"
        elif kind in ("failed", "pruned"):
            line = f"  trial {info['trial']} {kind}: {info['reason']}"
        elif kind == "done":
            err = "" if info["val_error"] is None else f", val error {info['val_error']:.2%}"
            line = f"  trial {info['trial']} {info['status']}{err} (best {info['best']:.2%})"
        else:
            line = info["message"]
        typer.echo(line)


def _generation(info: dict[str, Any]) -> str:
    """``"generation 2: 4 children, 2 epochs each, ~3 min 10 s planned"``."""
    line = (f"generation {info['generation']}: {plural(info['children'], 'child', 'children')}, "
            f"{plural(round(info['epochs'], 2), 'epoch')} each")
    return line if info.get("seconds") is None else f"{line}, ~{duration(info['seconds'])} planned"


def _length(info: dict[str, Any]) -> str:
    if info.get("seconds") is None:
        return plural(info["epochs"], "epoch")
    return f"{info['seconds']:.0f} s, at most {plural(info['epochs'], 'epoch')}"


def _print_summary(console: Console, s: SearchSummary) -> None:
    from morphnas.search.record import TrialRecord
    from morphnas.search.study import load_study, open_storage, shown_url

    seed = TrialRecord.from_trial(load_study(open_storage(s.storage), s.study).trials[s.lineage[0]])
    console.print(f"[bold]best trial {s.best_trial}[/] of study {s.study} ({plural(s.n_trials, 'trial')}, "
                  f"{s.n_failed} failed)")
    console.print(f"  params {s.params:,}, MACs {s.macs / 1e6:.2f} M, lineage {' -> '.join(map(str, s.lineage))}")
    console.print(f"  checkpoint {s.checkpoint}")
    console.print(f"  storage {shown_url(s.storage)}  ({s.seconds:.0f} s)")
    console.print(f"[bold]test error {s.test_error:.2%}[/], validation error {s.val_error:.2%} "
                  f"({plural(len(s.lineage) - 1, 'step')} from the seed network)")
    # the seed had the seed phase's share of the budget, not the budget: a reference point, not a baseline
    console.print(f"  the seed network after its seed phase ({plural(round(seed.epochs or 0, 2), 'epoch')}, "
                  f"{duration(seed.seconds or 0)}): test error {s.seed_test_error:.2%}, "
                  f"validation error {s.seed_val_error:.2%}")
    if s.pareto_front:
        console.print("Pareto front (validation error, params, MACs): " + "; ".join(
            f"trial {p['trial']} {p['val_error']:.2%}, {p['params']:,}, {p['macs'] / 1e6:.2f} M"
            for p in s.pareto_front))


def search(
    space: str = typer.Option("default", "--space", help="Search space YAML file or name in search_spaces/."),
    dataset: str = typer.Option(None, "--dataset", help="Override the space's data set."),
    data_root: str = typer.Option(None, "--data-root", help="Where CIFAR or Fashion-MNIST files are."),
    download: bool = typer.Option(False, "--download", help="Fetch fashion-mnist into --data-root first."),
    storage: str = typer.Option(None, "--storage", help="SQLAlchemy URL (default: sqlite in the work dir)."),
    study: str = typer.Option(None, "--study", help="Study name (default: <space>-<timestamp>)."),
    workdir: Path = typer.Option(Path("runs"), "--workdir", help="Checkpoints and the default database."),
    executor: str = typer.Option(
        "local", "--executor",
        help="local (in-process, one child at a time, on every core), processes (children side by side on this "
             "machine, a core each) or ray."),
    ray_address: str = typer.Option(None, "--ray-address", help="Join a Ray cluster (implies --executor ray)."),
    gpus_per_child: float = typer.Option(0.0, "--gpus-per-child", min=0.0, help="Fraction of a GPU per child."),
    cpus_per_child: float = typer.Option(None, "--cpus-per-child", min=0.0, help="CPUs per child."),
    generations: int = typer.Option(None, "--generations", min=1),
    children: int = typer.Option(None, "--children", min=1),
    epochs: float = typer.Option(None, "--epochs", help="Fine-tuning epochs per child (> 0)."),
    seed_epochs: float = typer.Option(None, "--seed-epochs", help="Bound the seed's training (quick looks; > 0)."),
    time_budget: str = typer.Option(None, "--time-budget", help="Wall-clock budget, e.g. 10m."),
    objectives: str = typer.Option(None, "--objectives", help="error, error,macs or error,params."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed search (needs --study)."),
    force: bool = typer.Option(False, "--force", help="With --resume: take the study over from a driver that "
                               "still holds its lease (one on another machine that you know is gone)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object at the end."),
) -> None:
    """Search by morphing: seed, generations of fine-tuned children, the best child."""
    # torch loads only when a search runs, not for --help (tests/test_cli_startup_and_wheel.py)
    from morphnas.search import SearchOptions, run_search
    from morphnas.search.study import shown_url
    from morphnas.train import download_dataset

    if ray_address is not None:  # joining a cluster means running the children there
        executor = "ray"
    seconds = None if time_budget is None else parse_duration(time_budget)
    for flag, value in (("--epochs", epochs), ("--seed-epochs", seed_epochs), ("--time-budget", seconds)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be > 0, got {value:g}")
    loaded = load_space(space)
    overrides = Overrides(
        generations=generations, children=children, time_budget=seconds, finetune_epochs=epochs,
        seed_epochs=seed_epochs, objectives=[o.strip() for o in objectives.split(",")] if objectives else None,
        dataset=dataset or None, data_root=data_root or None,
    )
    if download:
        data = overrides.apply(loaded, space).dataset
        download_dataset(data.name, data.data_root)
    import torch

    console = make_console()
    # in-process children use every torch thread; side by side or on Ray each child gets one CPU unless told
    cpus = cpus_per_child or (torch.get_num_threads() if executor == "local" else 1)
    try:
        # no storage path: children come back through Ray, Tune's own state goes to a removed temporary dir
        with make_executor(executor, cpus_per_child=cpus, gpus_per_child=gpus_per_child,
                           ray_address=ray_address) as runner:
            options = SearchOptions(
                space=loaded, workdir=workdir, storage=storage, study=study, executor=runner, seed=seed,
                resume=resume, force=force, overrides=overrides,
            )
            if as_json:
                summary = run_search(options)
            elif not sys.stdout.isatty():
                summary = run_search(options, EventLog())
            else:
                view = LiveView(console)
                with view.live:
                    summary = run_search(options, view)
    except SearchInterrupted as stop:  # Ctrl-C or SIGTERM: finished trials are kept, the message says how to go on
        typer.echo(str(stop), err=True)
        raise typer.Exit(128 + stop.signal) from None
    if as_json:
        typer.echo(json.dumps({**{k: summary.to_json()[k] for k in (
            "study", "storage", "best_trial", "val_error", "test_error", "params", "macs", "n_trials", "n_failed",
            "seed_val_error", "seed_test_error", "lineage", "checkpoint", "seconds")},
                               "storage": shown_url(summary.storage),
                               **({"pareto_front": summary.pareto_front} if summary.pareto_front else {})}))
    else:
        _print_summary(console, summary)


def register(app: typer.Typer) -> None:
    app.command("search")(search)
