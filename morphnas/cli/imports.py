"""``morphnas import``: import a PyTorch network (a module attribute or a torchvision model) as a checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from morphnas.cli.arch import parse_shape


def import_command(
    network: str = typer.Argument(..., help="MODULE:ATTR (an nn.Module or a factory) or torchvision:NAME."),
    input: str = typer.Option("3x224x224", "--input", help="Input shape C x H x W (no batch dimension)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write (arch.json, weights.safetensors, "
                                                 "metrics.json)."),
    classes: int = typer.Option(None, "--classes", min=1,
        help="Number of classes (torchvision models only): another count gets a fresh head."),
    weights_file: Path = typer.Option(None, "--weights",
        help="Trained weights: a state dict in safetensors or a PyTorch file (read with weights_only)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1,
        help="Seed of the random weights (a torchvision network, a fresh head) and of the inputs the import is "
             "checked on."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the changes made to fit are its "
                                                        "notes)."),
) -> None:
    """Import a PyTorch network as a checkpoint the other commands read (arch show, export).

    The network is traced with torch.fx, every node mapped onto morphnas's layers and its weights carried over;
    the checkpoint is written only if it computes the network's outputs within 1e-10 relative (eval mode,
    float64). A node the IR cannot express is refused with one line naming it (exit 2). A torchvision network
    fits --input and --classes: grey input sums the first convolution's RGB kernels into one channel, another
    class count replaces the head with a fresh one; each change is said in one line.
    """
    # torch loads here, when a network is imported, not for --help (tests/test_cli_startup_and_wheel.py)
    from morphnas.ir import cost
    from morphnas.ir.importer import build_module, from_torch
    from morphnas.train.checkpoint import save_checkpoint

    shape = parse_shape(input)
    built = build_module(network, channels=shape[0], classes=classes, weights=weights_file, seed=seed)
    if not as_json:
        for note in built.notes:
            typer.echo(note)
    started = time.perf_counter()
    imported = from_torch(built.module, shape, seed=seed)
    seconds = time.perf_counter() - started
    graph, weights = imported.graph, imported.weights
    info = cost(graph)
    metrics = {
        "imported_from": network,
        **({"imported_weights": str(weights_file)} if weights_file is not None else {}),
        "import_max_rel_err": imported.max_rel_err,
        "import_seconds": round(seconds, 3),
        **info,
    }
    save_checkpoint(out, arch=graph.to_json(), weights=weights, metrics=metrics)
    n_layers = sum(1 for _ in graph.edges())
    if as_json:
        typer.echo(json.dumps({**metrics, "import_tolerance": imported.tolerance, "layers": n_layers,
                               "input_shape": list(shape), "notes": list(built.notes), "checkpoint": str(out)}))
        return
    typer.echo(
        f"imported {network}: {n_layers} layers, {info['params']:,} params, {info['macs'] / 1e6:.1f} M MACs at "
        f"{input}; max relative error {imported.max_rel_err:.2g}; wrote {out}"
    )


def register(app: typer.Typer) -> None:
    app.command("import")(import_command)
