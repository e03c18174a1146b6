"""``morphnas studies``: list studies, show their trials, trace a trial's lineage, delete a study."""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import typer
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from morphnas.cli.output import console as make_console
from morphnas.errors import ConfigError, StudyError
from morphnas.search.record import TrialRecord, morph_text
from morphnas.search.study import (
    best_trial,
    default_storage,
    delete_study,
    final_trial,
    find_trial,
    is_multi_objective,
    lineage,
    load_study,
    open_storage,
    shown_url,
    study_dir,
    study_metric,
    study_names,
    trials_frame,
)

studies_app = typer.Typer(no_args_is_help=True, help="List, inspect and delete search studies.")

STORAGE = typer.Option(None, "--storage", help="SQLAlchemy URL (default: sqlite in the work dir).")
WORKDIR = typer.Option(Path("runs"), "--workdir", help="Work directory holding the default database.")
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
INT_COLUMNS = ("number", "generation", "parent", "params", "macs", "rung")


def resolve_storage(storage: str | None, workdir: Path) -> tuple[str, optuna.storages.BaseStorage]:
    """The storage URL and the opened storage; a missing SQLite file is an error, never created."""
    url = storage or default_storage(workdir)
    try:
        parsed = make_url(url)
    except ArgumentError:
        parsed = None  # open_storage reports the malformed URL
    if parsed is not None and parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            hint = "run `morphnas search` first, or pass --storage" if storage is None else "check --storage"
            raise StudyError(f"no study database at {parsed.database} ({hint})")
    return url, open_storage(url)


def _clean(value: Any) -> Any:
    """JSON-ready: NaN and missing become None, numpy scalars plain Python."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def study_row(study: optuna.Study) -> dict[str, Any]:
    """One study's summary: trial counts by state, best trial and value, first and last dates."""
    trials = study.get_trials(deepcopy=False)
    try:
        best: FrozenTrial | None = best_trial(study)
    except StudyError:
        best = None
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete or t.datetime_start for t in trials if t.datetime_start]
    return {
        "name": study.study_name,
        "objectives": study.user_attrs.get("space", {}).get("objectives"),
        "n_trials": len(trials),
        **{state.lower(): sum(t.state.name == state for t in trials) for state in STATES},
        "best_trial": None if best is None else best.number,
        "best_val_error": None if best is None else best.values[0],
        "first": _when(min(starts, default=None)),
        "last": _when(max(ends, default=None)),
    }


@studies_app.command("list")
def list_studies(
    storage: str = STORAGE,
    workdir: Path = WORKDIR,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Every study in the storage: trials by state, best validation error, first and last dates."""
    url, store = resolve_storage(storage, workdir)
    rows = [study_row(load_study(store, name)) for name in study_names(store)]
    if as_json:
        typer.echo(json.dumps({"storage": shown_url(url), "studies": rows}))
        return
    console = make_console()
    if not rows:
        console.print(f"no studies in {escape(shown_url(url))}")
        return
    columns = ["study", "objectives", "trials", "complete", "pruned", "failed", "running", "best val error",
               "best trial", "first", "last"]
    cells = [[
        r["name"], ", ".join(r["objectives"] or []) or "-", str(r["n_trials"]), str(r["complete"]),
        str(r["pruned"]), str(r["fail"]), str(r["running"]),
        "-" if r["best_val_error"] is None else f"{r['best_val_error']:.2%}",
        "-" if r["best_trial"] is None else str(r["best_trial"]),
        (r["first"] or "-").replace("T", " "), (r["last"] or "-").replace("T", " "),
    ] for r in rows]
    print_table(console, f"studies in {shown_url(url)}", columns, cells, left={"study", "objectives"})


def print_table(console: Console, title: str, columns: list[str], rows: list[list[str]], left: set[str]) -> None:
    """A table that never cuts a cell: rich, wrapping long cells, in a terminal; plain aligned
    rows (two spaces between columns) in a pipe or a file, as wide as their longest cell."""
    if console.is_terminal:
        table = Table(title=escape(title))
        for column in columns:
            table.add_column(column, justify="left" if column in left else "right", overflow="fold")
        for row in rows:
            table.add_row(*(escape(c) for c in row))
        console.print(table)
        return
    widths = [max(len(c) for c in (column, *(row[i] for row in rows))) for i, column in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if col in left else c.rjust(w)
                         for c, w, col in zip(cells, widths, columns, strict=True)).rstrip()

    typer.echo(title)
    for cells in (columns, *rows):
        typer.echo(line(cells))


def trial_records(study: optuna.Study, top: int | None) -> list[dict[str, Any]]:
    """The rows of ``trials_frame`` (each trial's :class:`~morphnas.search.record.TrialRecord` and its
    test error) as JSON-ready dicts; with ``top``, the best completed trials first.

    A multi-objective study's rows carry ``pareto`` (on the study's Pareto front); others ``None``.
    """
    frame = trials_frame(study)
    if top is not None:
        frame = frame[frame["state"] == "COMPLETE"].sort_values(["val_error", "number"]).head(top)
    front = {t.number for t in study.best_trials} if is_multi_objective(study) else None
    records = []
    for row in frame.to_dict("records"):
        record = {k: _clean(v) for k, v in row.items()}
        record.update({k: int(record[k]) for k in INT_COLUMNS if record[k] is not None})
        record["pareto"] = None if front is None else record["number"] in front
        records.append(record)
    return records


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


@studies_app.command("show")
def show(
    study: str = typer.Argument(..., help="Study name (see `morphnas studies list`)."),
    top: int = typer.Option(None, "--top", min=1, help="Only the N completed trials of lowest validation error."),
    storage: str = STORAGE,
    workdir: Path = WORKDIR,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """A study's trials: lineage, morphs, errors, cost; the Pareto front of a multi-objective study marked."""
    _, store = resolve_storage(storage, workdir)
    s = load_study(store, study)
    records = trial_records(s, top)
    try:
        best: int | None = best_trial(s).number
    except StudyError:
        best = None
    if as_json:
        typer.echo(json.dumps({"study": s.study_name, "multi_objective": is_multi_objective(s), "best_trial": best,
                               "trials": records}))
        return
    multi = is_multi_objective(s)
    title = f"study {s.study_name}: {len(s.get_trials(deepcopy=False))} trials" + (
        f", best trial {best}" if best is not None else ", no completed trial")
    columns = ["trial", "state", "gen", "parent", "morphs", "val error", "test error", "params", "MACs",
               "pres. error", "time", "note"]
    if multi:
        columns.insert(2, "pareto")
    rows = []
    for r in records:
        cells = [
            f"{r['number']}" + (" *" if r["number"] == best else ""), r["state"].lower(), str(r["generation"]),
            "-" if r["parent"] is None else str(r["parent"]), morph_text(r["morphs"]) or r["rule"] or "-",
            _percent(r["val_error"]), _percent(r["test_error"]),
            "-" if r["params"] is None else f"{r['params']:,}",
            "-" if r["macs"] is None else f"{r['macs'] / 1e6:.3f} M",
            "-" if r["preservation_error"] is None else f"{r['preservation_error']:.1e}",
            "-" if r["duration_s"] is None else f"{r['duration_s']:.1f} s",
            r["reason"] or "",
        ]
        if multi:
            cells.insert(2, "yes" if r["pareto"] else "")
        rows.append(cells)
    print_table(make_console(), title, columns, rows,
                left=set(columns) - {"trial", "gen", "parent", "params", "MACs"})
    if best is not None:
        make_console().print(f"* best: {_best_rule(s)}" + (" on the Pareto front" if multi else ""))


def _best_rule(study: optuna.Study) -> str:
    if not is_multi_objective(study) and final_trial(study) is not None:
        return "the network of the search's final phase"
    return "lowest validation " + ("loss" if study_metric(study) == "loss" else "error")


def _morphs(record: TrialRecord) -> str:
    parts = []
    for m in record.morphs or []:
        params = ", ".join(f"{k}={v}" for k, v in (m.get("params") or {}).items())
        parts.append(f"{m['name']}@{m['site']}" + (f" ({params})" if params else ""))
    return " + ".join(parts)


def _step(study: optuna.Study, trial: FrozenTrial, before: float | None) -> str:
    """One line of the lineage tree: trial, morphs, val error after it (and its change), cost."""
    a = TrialRecord.from_trial(trial)
    if a.parent is None:
        arch = study.user_attrs.get("space", {}).get("seed", {}).get("arch", "?")
        what = f"seed {arch}"
    else:
        what = _morphs(a) or str(a.rule or "?")
    if trial.state == TrialState.COMPLETE:
        error = trial.values[0]
        change = "" if before is None else f" ({(error - before) * 100:+.2f} pp)"
        result = f"val error [bold]{error:.2%}[/]{change}"
    else:
        result = f"[red]{trial.state.name.lower()}[/]" + (f": {escape(a.reason)}" if a.reason else "")
    cost = (f"  [dim]{a.params:,} params, {a.macs / 1e6:.3f} M MACs[/]"
            if a.params is not None and a.macs is not None else "")
    return f"[bold]trial {trial.number}[/]  {escape(what)}  ->  {result}{cost}"


@studies_app.command("lineage")
def lineage_cmd(
    study: str = typer.Argument(..., help="Study name."),
    trial: int = typer.Option(None, "--trial", help="Trial number (default: the best trial)."),
    storage: str = STORAGE,
    workdir: Path = WORKDIR,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """The morphs from the seed to a trial, each with the validation error after it."""
    _, store = resolve_storage(storage, workdir)
    s = load_study(store, study)
    chain = lineage(s, find_trial(s, trial).number)
    if as_json:
        records = [TrialRecord.from_trial(t) for t in chain]
        steps = [{"trial": r.number, "parent": r.parent, "rule": r.rule, "morphs": r.morphs or [], "state": r.state,
                  "val_error": r.val_error if r.state == TrialState.COMPLETE.name else None,
                  "params": r.params, "macs": r.macs} for r in records]
        typer.echo(json.dumps({"study": s.study_name, "trial": chain[-1].number, "lineage": steps}))
        return
    root = Tree(f"study {escape(s.study_name)}: lineage of trial {chain[-1].number}")
    node, before = root, None
    for t in chain:
        node = node.add(_step(s, t, before))
        before = t.values[0] if t.state == TrialState.COMPLETE else before
    make_console().print(root)


@studies_app.command("delete")
def delete(
    study: str = typer.Argument(..., help="Study name."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking."),
    storage: str = STORAGE,
    workdir: Path = WORKDIR,
) -> None:
    """Delete a study: its trials in the storage and its checkpoints under the work directory."""
    _, store = resolve_storage(storage, workdir)
    s = load_study(store, study)
    directory = study_dir(s)
    n = len(s.get_trials(deepcopy=False))
    what = f"study {study!r} ({n} trial{'s' * (n != 1)})" + (
        f" and {directory}" if directory is not None and directory.is_dir() else "")
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"not deleting {what} without confirmation: pass --yes")
        typer.confirm(f"delete {what}?", abort=True)
    delete_study(store, study)
    typer.echo(f"deleted {what}")


def register(app: typer.Typer) -> None:
    app.add_typer(studies_app, name="studies")
