"""``morphnas morphnet``: MorphNet shrink-expand cycles on one network, written as a checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from morphnas.cli.train import check_out
from morphnas.errors import ConfigError
from morphnas.ir import ArchGraph, compile_graph, cost, init_weights, load_arch
from morphnas.morph.expand import narrowest_cost
from morphnas.morphnet import DEFAULT_STRENGTH, DEFAULT_THRESHOLD, TARGETS, CycleConfig, layer_widths, morphnet
from morphnas.morphnet.cycle import parse_budget
from morphnas.train import DATASETS, load_dataset, save_checkpoint, train


def _check_fits(graph: ArchGraph, input_shape: tuple[int, ...], num_classes: int, dataset: str) -> None:
    if tuple(graph.input_shape) != tuple(input_shape):
        raise ConfigError(
            f"the network takes {'x'.join(map(str, graph.input_shape))} inputs but {dataset} has "
            f"{'x'.join(map(str, input_shape))}"
        )
    if tuple(graph.shapes()[graph.sink]) != (num_classes,):
        outputs = graph.shapes()[graph.sink]
        raise ConfigError(f"the network has {outputs} outputs but {dataset} has {num_classes} classes")


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
    augment: bool = typer.Option(True, "--augment/--no-augment", help="The data set's training augmentation."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Where CIFAR lives (default ./data)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write (replaced if it is one)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Shrink a network with MorphNet's cost-weighted regulariser, then expand it to a budget."""
    if target not in TARGETS:
        raise ConfigError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if iterations < 1:
        raise ConfigError(f"--iterations must be >= 1, got {iterations}")
    parse_budget(budget, 1.0)  # fail on a malformed budget before loading anything
    check_out(out)
    data = load_dataset(dataset, data_root=data_root, augment=augment)
    graph = load_arch(arch, input_shape=data.input_shape, num_classes=data.num_classes)
    _check_fits(graph, data.input_shape, data.num_classes, dataset)
    before_cost = cost(graph)
    config = CycleConfig(budget=parse_budget(budget, float(before_cost[target])), target=target, iterations=iterations,
                         epochs=epochs, strength=strength, threshold=threshold, seed=seed)
    floor = narrowest_cost(graph, target)
    if config.budget < floor:
        raise ConfigError(f"budget {config.budget:g} is below the cost of the narrowest network ({floor:g} {target} "
                          f"with one channel per group)")
    console = Console(stderr=as_json, quiet=as_json)

    model = compile_graph(graph, init_weights(graph, seed))
    seed_run = train(model, data, config.train_config(epochs, seed))
    console.print(f"seed {arch}: val error {seed_run.val_error:.2%}   MACs {before_cost['macs']:,}   "
                  f"params {before_cost['params']:,}   budget {config.budget:,.0f} {target}")

    def on_event(kind: str, info: dict[str, Any]) -> None:
        if kind == "shrunk":
            console.print(f"  cycle {info['iteration'] + 1}: shrunk to {info['macs']:,} MACs, {info['params']:,} "
                          f"params ({info['note']})")
        elif kind == "expanded":
            console.print(f"  cycle {info['iteration'] + 1}: width x {info['factor']:.4f} -> {info['macs']:,} MACs, "
                          f"{info['params']:,} params")
        elif kind == "trained":
            console.print(f"  cycle {info['iteration'] + 1}: val error {info['val_error']:.2%}")

    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = morphnet(graph, weights, data, config, on_event=on_event)
    after_cost = cost(result.graph)
    widths_before, widths_after = layer_widths(graph), layer_widths(result.graph)
    widths_after = {**{name: 0 for name in widths_before}, **widths_after}  # removed layers: 0
    summary = {
        "macs_before": int(before_cost["macs"]),
        "macs_after": int(after_cost["macs"]),
        "params_before": int(before_cost["params"]),
        "params_after": int(after_cost["params"]),
        "val_error_before": seed_run.val_error,
        "val_error_after": result.iterations[-1].val_error,
        "widths_before": widths_before,
        "widths_after": widths_after,
        "target": target,
        "budget": config.budget,
    }
    metrics = {**summary, "dataset": dataset, "arch": arch, "config": dataclasses.asdict(config),
               "iterations": result.to_json(), "normalisation": {"mean": list(data.mean), "std": list(data.std)}}
    path = save_checkpoint(out, arch=result.graph.to_json(), weights=result.weights, metrics=metrics)
    if as_json:
        typer.echo(json.dumps({**summary, "out": str(path)}))
        return
    console.print(_width_table(widths_before, widths_after))
    console.print(
        f"{arch} on {dataset}: val error {summary['val_error_before']:.2%} -> "
        f"{summary['val_error_after']:.2%}   MACs {summary['macs_before']:,} -> {summary['macs_after']:,}   "
        f"params {summary['params_before']:,} -> {summary['params_after']:,}   -> {path}"
    )


def register(app: typer.Typer) -> None:
    app.command("morphnet")(morphnet_command)
