"""The ``morphnas`` command: a thin typer layer over the Python API.

Every :class:`~morphnas.errors.MorphnasError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import click
import typer
from typer.core import TyperGroup

from morphnas import __version__
from morphnas.errors import MorphnasError


class _OneLineErrors(TyperGroup):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MorphnasError as err:
            typer.echo(f"morphnas: error: {err}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Neural architecture search by exact network morphisms.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"morphnas {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Neural architecture search by exact network morphisms."""


def _register_all() -> None:
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}").register(app)


_register_all()
