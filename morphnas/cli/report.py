"""``morphnas report`` (a self-contained HTML report or the main figure) and ``morphnas dashboard``."""

from __future__ import annotations

from pathlib import Path

import typer

from morphnas.cli.studies import STORAGE, WORKDIR, resolve_storage
from morphnas.search.study import load_study, shown_url


def report(
    study: str = typer.Argument(..., help="Study name (see `morphnas studies list`)."),
    out: Path = typer.Option(..., "--out", help="report.html (the whole report) or X.png/.svg/.pdf (error vs MACs)."),
    storage: str = STORAGE,
    workdir: Path = WORKDIR,
) -> None:
    """Write a study's report: history, error vs MACs with the Pareto front, lineage tree, best architecture."""
    from morphnas.report import build_report  # plotly and matplotlib load only when a report is made

    _, store = resolve_storage(storage, workdir)
    typer.echo(f"wrote {build_report(load_study(store, study), out)}")


def dashboard(
    storage: str = STORAGE,
    workdir: Path = WORKDIR,
    port: int = typer.Option(8080, "--port", min=1, max=65535),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
) -> None:
    """Serve optuna-dashboard on the study storage until interrupted."""
    import optuna_dashboard

    url, store = resolve_storage(storage, workdir)
    typer.echo(f"optuna-dashboard for {shown_url(url)} on http://{host}:{port}/ (Ctrl-C to stop)")
    optuna_dashboard.run_server(store, host=host, port=port)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("dashboard")(dashboard)
