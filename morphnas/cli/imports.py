"""``morphnas import``: import a PyTorch network (a module attribute or a torchvision model) as a checkpoint."""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

import typer
from torch import nn

from morphnas.cli.arch import parse_shape
from morphnas.errors import ConfigError
from morphnas.ir import cost
from morphnas.ir.importer import from_torch
from morphnas.train.checkpoint import save_checkpoint


def build_module(spec: str, classes: int | None = None) -> nn.Module:
    """``torchvision:NAME`` (randomly initialised, nothing downloaded) or ``MODULE:ATTR``.

    ``MODULE:ATTR`` names an ``nn.Module`` or a zero-argument callable returning one (``ATTR`` may be
    dotted); the current directory is searched first, as ``python -m`` does.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"the network must look like MODULE:ATTR or torchvision:NAME, got {spec!r}")
    if module_name == "torchvision":
        return _torchvision(attr, classes)
    if classes is not None:
        raise ConfigError("--classes applies to torchvision models only")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - the user's module may raise anything on import
        raise ConfigError(f"cannot import module {module_name!r}: {_line(err)}") from None
    for part in attr.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"{module_name!r} has no attribute {attr!r}")
        value = getattr(value, part)
    if not isinstance(value, nn.Module):
        if not callable(value):
            raise ConfigError(f"{spec} is neither an nn.Module nor a callable returning one")
        try:
            value = value()
        except Exception as err:  # noqa: BLE001 - the user's factory may raise anything
            raise ConfigError(f"calling {spec}() failed: {_line(err)}") from None
        if not isinstance(value, nn.Module):
            raise ConfigError(f"{spec}() returned a {type(value).__name__}, not an nn.Module")
    return value


def _torchvision(name: str, classes: int | None) -> nn.Module:
    try:
        from torchvision import models
    except ImportError:
        raise ConfigError("torchvision is not installed (pip install torchvision)") from None
    known = models.list_models(module=models)
    if name not in known:
        raise ConfigError(f"unknown torchvision classification model {name!r}; e.g. resnet18, vgg11, mobilenet_v2")
    options = {} if classes is None else {"num_classes": classes}
    return models.get_model(name, weights=None, **options)


def _line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:200]


def import_command(
    network: str = typer.Argument(..., help="MODULE:ATTR (an nn.Module or a factory) or torchvision:NAME."),
    input: str = typer.Option("3x224x224", "--input", help="Input shape C x H x W (no batch dimension)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write (arch.json, weights.safetensors, "
                                                 "metrics.json)."),
    classes: int = typer.Option(None, "--classes", min=1, help="Number of classes (torchvision models only)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1,
        help="Seed of the random inputs the import is checked on."),
) -> None:
    """Import a PyTorch network as a checkpoint the other commands read (arch show, export).

    The network is traced with torch.fx, every node mapped onto morphnas's layers and its weights carried over;
    the checkpoint is written only if it computes the network's outputs within 1e-5 relative (eval mode,
    float32). A node the IR cannot express is refused with one line naming it (exit 2).
    """
    shape = parse_shape(input)
    module = build_module(network, classes)
    started = time.perf_counter()
    imported = from_torch(module, shape, seed=seed)
    seconds = time.perf_counter() - started
    graph, weights = imported.graph, imported.weights
    info = cost(graph)
    metrics = {
        "imported_from": network,
        "import_max_rel_err": imported.max_rel_err,
        "import_seconds": round(seconds, 3),
        **info,
    }
    save_checkpoint(out, arch=graph.to_json(), weights=weights, metrics=metrics)
    n_layers = sum(1 for _ in graph.edges())
    typer.echo(
        f"imported {network}: {n_layers} layers, {info['params']:,} params, {info['macs'] / 1e6:.1f} M MACs at "
        f"{input}; max relative error {imported.max_rel_err:.2g}; wrote {out}"
    )


def register(app: typer.Typer) -> None:
    app.command("import")(import_command)
