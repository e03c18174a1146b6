"""The ``morphnas`` command: a thin typer layer over the Python API.

A command's module is imported only when that command runs, so ``morphnas --help`` and
``morphnas studies list`` start without torch. Every usage error and every
:class:`~morphnas.errors.MorphnasError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import typer

# typer vendors click (typer >= 0.26) and exports no usage-error class of its own.
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperCommand, TyperGroup

from morphnas import __version__
from morphnas.errors import MorphnasError

# Each command: the module of morphnas.cli that registers it, and its help as `morphnas --help` lists it
# (the first paragraph of the command's own help; tests/test_cli_startup_and_wheel.py checks they agree).
COMMANDS = {
    "export": ("export", "Export the best (or a chosen) morphed network and check it reproduces PyTorch's outputs."),
    "import": ("imports", "Import a PyTorch network as a checkpoint the other commands read (arch show, export)."),
    "morphnet": ("morphnet", "Shrink a network with MorphNet's cost-weighted regulariser, then expand it to a budget."),
    "report": ("report", "Write a study's report: history, error vs MACs with the Pareto front, lineage tree, "
                         "best architecture."),
    "dashboard": ("report", "Serve optuna-dashboard on the study storage until interrupted."),
    "search": ("search", "Search by morphing: seed, generations of fine-tuned children, the best child."),
    "train": ("train", "Train a network on a data set, write its checkpoint and report its errors."),
    "verify": ("verify", "Apply each morph at a seeded site of a randomly weighted network and check function "
                         "preservation."),
    "arch": ("arch", "Show and save architectures."),
    "grammar": ("grammar", "The graph grammar and its module algebra."),
    "studies": ("studies", "List, inspect and delete search studies."),
}


def load_command(name: str) -> TyperCommand | TyperGroup:
    """The command ``name``, built by the ``register`` function of its module."""
    commands = typer.Typer()
    importlib.import_module(f"{__name__}.{COMMANDS[name][0]}").register(commands)
    return typer.main.get_group(commands).commands[name]


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except NoArgsIsHelpError:
        raise  # the help is already printed
    except UsageError as err:
        hint = "" if err.ctx is None else f" (see '{err.ctx.command_path} --help')"
        typer.echo(f"morphnas: error: {' '.join(err.format_message().splitlines())}{hint}", err=True)
        raise typer.Exit(2) from None
    except MorphnasError as err:
        typer.echo(f"morphnas: error: {err}", err=True)
        raise typer.Exit(2) from None


class _LazyGroup(TyperGroup):
    """Lists every command from COMMANDS and imports one only to run it; errors on one line."""

    def __init__(self, **attrs) -> None:
        super().__init__(**attrs)
        self.commands = {name: TyperCommand(name, help=text) for name, (_, text) in COMMANDS.items()}

    def resolve_command(self, ctx: typer.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        return name, command if name is None else load_command(name), rest

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        with _one_line_errors():
            return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context):
        with _one_line_errors():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_LazyGroup,
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
