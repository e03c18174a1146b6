"""``morphnas arch``: show and save architectures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from morphnas.cli.output import console
from morphnas.errors import ConfigError

if TYPE_CHECKING:
    from morphnas.ir import ArchGraph

arch_app = typer.Typer(no_args_is_help=True, help="Show and save architectures.")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3x32x32"`` -> ``(3, 32, 32)``."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input must look like 3x32x32, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise ConfigError(f"--input must be positive sizes like 3x32x32, got {text!r}")
    return shape


def resolve(arch: str, input_text: str, classes: int, shortcut: str, morph: str | None = None) -> ArchGraph:
    """The network named on the command line (a seed name, an architecture JSON file or a
    checkpoint directory, whose arch.json is read); ``morph`` applies a ResNet variant (1c1, 3c3_half, ...)."""
    # torch loads here, when a network is built, not for --help
    from morphnas.ir import init_weights, load_arch
    from morphnas.train.checkpoint import ARCH_FILE

    if Path(arch).is_dir():
        if not (Path(arch) / ARCH_FILE).is_file():
            raise ConfigError(f"{arch!r} is a directory without an {ARCH_FILE}: not a checkpoint directory")
        arch = str(Path(arch) / ARCH_FILE)
    options = {"shortcut": shortcut} if arch.startswith("resnet") else {}
    graph = load_arch(arch, parse_shape(input_text), classes, **options)
    if morph is None:
        return graph
    from morphnas.morph.resnet_ops import morph_resnet_variant  # the morph engine only for --morph (start-up)

    return morph_resnet_variant(graph, init_weights(graph), morph).graph


def summary(graph: ArchGraph) -> dict:
    from morphnas.ir import cost

    return {
        "input_shape": list(graph.input_shape),
        "n_blobs": len(graph.blobs()),
        "n_layers": sum(1 for _ in graph.edges()),
        **cost(graph),
    }


@arch_app.command("show")
def show(
    arch: str = typer.Argument(
        ..., help="A seed name (resnet20, cnn, mlp, ...), an architecture JSON file or a checkpoint directory."),
    input: str = typer.Option("3x32x32", "--input", help="Input shape C x H x W (seeds only)."),
    classes: int = typer.Option(10, "--classes", min=1, help="Number of classes (seeds only)."),
    shortcut: str = typer.Option("A", "--shortcut", help="ResNet shortcut: A (parameter-free) or B (projection)."),
    morph: str = typer.Option(None, "--morph", help="A ResNet variant of the 2017 paper: 1c1, 3c3_half, ..."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Blobs, layers, parameters and multiply-accumulates of a network."""
    graph = resolve(arch, input, classes, shortcut, morph)
    info = summary(graph)
    if as_json:
        typer.echo(json.dumps({"name": arch, **info, "architecture": graph.to_json()}))
        return
    shapes = graph.shapes()
    table = Table(title=f"{arch}: {info['n_layers']} layers, {info['n_blobs']} blobs")
    edges = list(graph.edges())
    # the layer names are the sites morphs are applied at: never cut; the other columns fold
    table.add_column("layer", no_wrap=True, min_width=max((len(e.name) for e in edges), default=5))
    for column in ("type", "from", "to", "output"):
        table.add_column(column, overflow="fold")
    for edge in edges:
        shape = "x".join(map(str, shapes[edge.dst]))
        table.add_row(edge.name, edge.layer.type, edge.src, edge.dst, shape)
    out = console()
    out.print(table)
    out.print(
        f"params {info['params']:,}   size {info['size_mb']:.3f} MB (stored floats)   "
        f"MACs {info['macs'] / 1e6:.2f} M"
    )


@arch_app.command("save")
def save(
    arch: str = typer.Argument(..., help="A seed name, an architecture JSON file or a checkpoint directory."),
    out: Path = typer.Option(..., "--out", help="Where to write the architecture JSON."),
    input: str = typer.Option("3x32x32", "--input", help="Input shape C x H x W."),
    classes: int = typer.Option(10, "--classes", min=1, help="Number of classes."),
    shortcut: str = typer.Option("A", "--shortcut", help="ResNet shortcut: A or B."),
) -> None:
    """Write a network's architecture JSON."""
    from morphnas.export.formats import prepare_file
    from morphnas.ir import arch_to_file

    graph = resolve(arch, input, classes, shortcut)
    try:
        arch_to_file(graph, prepare_file(out))  # missing folders are made, as export makes them
    except OSError as err:
        raise ConfigError(f"cannot write {out}: {err.strerror}") from None
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(arch_app, name="arch")
