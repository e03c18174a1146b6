"""``morphnas morphnet``: MorphNet shrink-expand cycles on one network, written as a checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from morphnas.cli.options import (
    AUGMENT_HELP,
    DATASETS,
    DEFAULT_STRENGTH,
    DEFAULT_THRESHOLD,
    TARGETS,
    AugmentKind,
    augment_kind,
)
from morphnas.cli.output import console as make_console
from morphnas.cli.train import check_out
from morphnas.errors import ConfigError


def _width_table(before: dict[str, int], after: dict[str, int]) -> Table:
    table = Table(title="per-layer widths (output channels)")
    for column in ("layer", "before", "after"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for name in list(before) + [n for n in after if n not in before]:
        old, new = before.get(name), after.get(name, 0)
        table.add_row(name, "-" if old is None else str(old), "removed" if new == 0 else str(new))
    return table


def morphnet_command(
    arch: str = typer.Option(..., "--arch", help="A seed name (resnet20, cnn, ...) or an architecture JSON file."),
    dataset: str = typer.Option("mnist5k", "--dataset", help=f"One of {', '.join(DATASETS)}."),
    target: str = typer.Option("macs", "--target", help="The resource to constrain: macs or params."),
    budget: str = typer.Option(..., "--budget", help="Absolute (30000000) or relative to the seed's cost (0.5x)."),
    iterations: int = typer.Option(1, "--iterations", help="Shrink-expand cycles."),
    epochs: float = typer.Option(3.0, "--epochs", help="Epochs of each training phase (seed, regularised, retrain)."),
    strength: float = typer.Option(DEFAULT_STRENGTH, "--strength", help="Regulariser strength (x 1 / seed cost)."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, "--threshold", help="|gamma| below this: channel removed."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Seeds the weights, shuffling and new filters."),
    augment: AugmentKind = typer.Option("default", "--augment", metavar="KIND", help=AUGMENT_HELP),
    data_root: Path | None = typer.Option(None, "--data-root", help="Where CIFAR lives (default ./data)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write (replaced if it is one)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Shrink a network with MorphNet's cost-weighted regulariser, then expand it to a budget."""
    # torch loads here, when a network trains, not for --help (tests/test_cli_startup_and_wheel.py)
    from morphnas.ir import check_fits, cost, load_arch
    from morphnas.morphnet import CycleConfig
    from morphnas.morphnet.cycle import morphnet_from_scratch, parse_budget
    from morphnas.train import load_dataset, save_checkpoint

    if target not in TARGETS:
        raise ConfigError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if iterations < 1:
        raise ConfigError(f"--iterations must be >= 1, got {iterations}")
    if budget.strip().startswith("-"):
        raise ConfigError(f"--budget must be positive, got {budget!r}")
    parse_budget(budget, 1.0)  # fail on a malformed budget before loading anything
    check_out(out)
    data = load_dataset(dataset, data_root=data_root, augment=augment_kind(augment))
    graph = load_arch(arch, input_shape=data.input_shape, num_classes=data.num_classes)
    check_fits(graph, data.input_shape, data.num_classes, dataset)
    config = CycleConfig(budget=parse_budget(budget, float(cost(graph)[target])), target=target,
                         iterations=iterations, epochs=epochs, strength=strength, threshold=threshold, seed=seed)
    console = make_console(stderr=as_json, quiet=as_json)

    def on_event(kind: str, info: dict[str, Any]) -> None:
        if kind == "seed":
            console.print(f"seed {arch}: val error {info['val_error']:.2%}   MACs {info['macs']:,}   "
                          f"params {info['params']:,}   budget {config.budget:,.0f} {target}")
        elif kind == "shrunk":
            console.print(f"  cycle {info['iteration'] + 1}: shrunk to {info['macs']:,} MACs, {info['params']:,} "
                          f"params ({info['note']})")
        elif kind == "expanded":
            console.print(f"  cycle {info['iteration'] + 1}: width x {info['factor']:.4f} -> {info['macs']:,} MACs, "
                          f"{info['params']:,} params")
        elif kind == "trained":
            console.print(f"  cycle {info['iteration'] + 1}: val error {info['val_error']:.2%}")

    result, summary = morphnet_from_scratch(graph, data, config, on_event=on_event)
    metrics = {**summary, "dataset": dataset, "arch": arch, "config": dataclasses.asdict(config),
               "iterations": result.to_json(), "normalisation": {"mean": list(data.mean), "std": list(data.std)}}
    path = save_checkpoint(out, arch=result.graph.to_json(), weights=result.weights, metrics=metrics)
    if as_json:
        typer.echo(json.dumps({**summary, "out": str(path)}))
        return
    console.print(_width_table(summary["widths_before"], summary["widths_after"]))
    console.print(
        f"{arch} on {dataset}: val error {summary['val_error_before']:.2%} -> "
        f"{summary['val_error_after']:.2%}   MACs {summary['macs_before']:,} -> {summary['macs_after']:,}   "
        f"params {summary['params_before']:,} -> {summary['params_after']:,}   -> {path}"
    )


def register(app: typer.Typer) -> None:
    app.command("morphnet")(morphnet_command)
