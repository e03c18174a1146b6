"""``morphnas grammar``: classify modules (Algorithm 1) and list the grammar's rules."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from morphnas.errors import ConfigError, GraphError

grammar_app = typer.Typer(no_args_is_help=True, help="The graph grammar and its module algebra.")


def _read_module(source: str):
    from morphnas.modules import MODULES, module_from_json

    if source in MODULES:
        return MODULES[source]
    try:
        data = json.loads(Path(source).read_text())
    except OSError as err:
        raise ConfigError(f"cannot read module {source!r}: {err.strerror} (a module JSON file, or one of the "
                          f"paper's modules {', '.join(MODULES)})") from None
    except json.JSONDecodeError as err:
        raise GraphError(f"{source}: malformed JSON: {err}") from None
    return module_from_json(data)


@grammar_app.command("classify")
def classify(
    module: str = typer.Argument(..., help="A module JSON file, or A, B, C, D for the paper's Fig. 2 modules."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Simple morphable or complex (Algorithm 1): the morphing sequence, or the irreducible core."""
    from morphnas.modules import module_to_json, reduce_module  # torch loads to run, not for --help

    reduction = reduce_module(_read_module(module))
    kind = "simple" if reduction.simple else "complex"
    steps = [step.describe() for step in reduction.sequence]
    if as_json:
        typer.echo(json.dumps({"class": kind, "sequence": steps, "core": module_to_json(reduction.core)}))
        return
    typer.echo(f"{module}: {'simple morphable' if reduction.simple else 'complex'}")
    if reduction.simple:
        typer.echo(f"morphing sequence from the single edge {reduction.root}:")
    else:
        core = ", ".join(f"{n} {u}->{v} {k}x{k}" for u, v, n, k in reduction.core.edges(keys=True, data="kernel"))
        typer.echo(f"irreducible core (solved by Algorithm 2): {core}")
        if steps:
            typer.echo("then the morphing sequence:")
    for i, step in enumerate(steps, 1):
        typer.echo(f"  {i}. {step}")


@grammar_app.command("rules")
def rules(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """The grammar's rules and the morph each applies."""
    from morphnas.grammar.rules import RULES

    if as_json:
        typer.echo(json.dumps({"rules": [{"name": r.name, "morph": r.morph, "params": sorted(r.params),
                                          "summary": r.summary} for r in RULES.values()]}))
        return
    for rule in RULES.values():
        typer.echo(f"{rule.name:24s} {rule.morph:24s} {rule.summary}")


def register(app: typer.Typer) -> None:
    app.add_typer(grammar_app, name="grammar")
