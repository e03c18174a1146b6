"""Where a search starts: the seed network a space names, with its first weights.

``seed.arch`` in a search space is one of

- a built-in seed (``resnet8``, ``resnet20``, ``cnn``, ``mlp``, ...): fresh weights, or those of
  a safetensors file (``seed.weights``);
- an architecture JSON file (``morphnas arch save``): the same;
- ``torchvision:NAME`` or ``MODULE:ATTR`` (an ``nn.Module`` or a factory of one): imported with
  :func:`~morphnas.ir.from_torch` at the data set's input shape, with the module's own weights
  (random for torchvision, which downloads nothing, seeded by ``seed``); a torchvision network
  fits the data set as ``morphnas import`` fits it: grey images sum its first convolution's RGB
  kernels, its head gets one output per class;
- a checkpoint directory (``arch.json`` + ``weights.safetensors``: ``morphnas import``, an
  exported bundle, a trial of an earlier search): its architecture and weights, a warm start.

The network must take the data set's input shape and give one output per class; anything
else is refused with one line before a study is created.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from morphnas.errors import CheckpointError, ConfigError, GraphError
from morphnas.ir import ArchGraph, check_fits, compile_graph, from_torch, init_weights, load_arch
from morphnas.ir.importer import build_module
from morphnas.train import load_checkpoint, read_weights


class Seed(NamedTuple):
    """A seed network, its first weights and what was changed to fit it to the data set (one line
    each, as ``morphnas import`` says them; empty unless a torchvision network was adapted)."""

    graph: ArchGraph
    weights: dict[str, torch.Tensor]
    notes: tuple[str, ...] = ()


def seed_network(arch: str, input_shape: tuple[int, ...], num_classes: int, *, dataset: str = "the data set",
                 seed: int = 0, weights: str | None = None, **options) -> Seed:
    """The seed ``arch`` names (see the module docstring), its first weights and the changes made
    to fit it; ``options`` go to the built-in seeds (e.g. ``shortcut`` for the ResNets), ``seed``
    seeds fresh weights, and ``weights`` (a safetensors file) replaces them."""
    path = Path(arch)
    if weights is not None:
        if path.is_dir() or (":" in arch and not path.exists()):
            raise ConfigError(f"seed {arch!r} brings its own weights: seed.weights is for a built-in seed or "
                              "an architecture JSON file")
        try:
            given = read_weights(weights)
        except CheckpointError as err:
            raise ConfigError(f"seed.weights {weights!r}: {err}") from None
        graph = _fitting(arch, load_arch(arch, input_shape, num_classes, **options), input_shape, num_classes,
                         dataset)
        try:
            compile_graph(graph, given)
        except GraphError as err:
            raise ConfigError(f"seed weights {weights!r} do not fit {arch!r}: {err}") from None
        return Seed(graph, given)
    notes: tuple[str, ...] = ()
    if path.is_dir():
        if not (path / "arch.json").is_file():
            raise ConfigError(f"seed {arch!r} is a directory without an arch.json: not a checkpoint")
        graph_json, weights, _ = load_checkpoint(path)
        graph = ArchGraph.from_json(graph_json)
    elif ":" in arch and not path.exists():
        classes = num_classes if arch.startswith("torchvision:") else None  # a user's module is not adapted
        built = build_module(arch, channels=input_shape[0], classes=classes, seed=seed)
        imported = from_torch(built.module, input_shape, seed=seed)
        graph, weights, notes = imported.graph, imported.weights, built.notes
    else:
        try:
            graph = load_arch(arch, input_shape, num_classes, **options)
        except ConfigError as err:  # name the field, as a space's other errors do
            raise ConfigError(f"seed.arch {arch!r}: {err}") from None
        weights = init_weights(graph, seed)
    return Seed(_fitting(arch, graph, input_shape, num_classes, dataset), weights, notes)


def _fitting(arch: str, graph: ArchGraph, input_shape: tuple[int, ...], num_classes: int, dataset: str) -> ArchGraph:
    try:
        check_fits(graph, input_shape, num_classes, dataset)
    except ConfigError as err:
        raise ConfigError(f"seed {arch!r}: {err}") from None
    return graph

