"""Safetensors + JSON bundles, and :func:`load`, which reads bundles and checkpoint directories.

A bundle is a directory holding ``arch.json`` (the architecture graph) and
``weights.safetensors`` (the flat weights, exactly the compiled module's ``state_dict``), plus
``metrics.json`` when the metrics are known: a training checkpoint is a bundle with metrics.
Loading one reads JSON and safetensors only; nothing is ever unpickled, so bundles from anyone
are safe to load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from morphnas.errors import CheckpointError, ConfigError, GraphError
from morphnas.export import formats
from morphnas.export.formats import check_inputs, max_abs_diff, reference_module, require_within
from morphnas.ir import ArchGraph, Weights, compile_graph
from morphnas.train.checkpoint import ARCH_FILE, METRICS_FILE, WEIGHTS_FILE, read_json_object, write_atomically


def export_bundle(
    graph: ArchGraph,
    weights: Weights,
    path: str | Path,
    *,
    metrics: dict[str, Any] | None = None,
    check: bool = True,
    tolerance: float | None = None,
) -> float:
    """Write a bundle directory at ``path``; the max abs difference of :func:`load` on it from PyTorch.

    Written as checkpoints are (:func:`~morphnas.train.checkpoint.write_atomically`): built beside
    the target and renamed into place. An existing bundle, checkpoint or empty directory at
    ``path`` is replaced; anything else raises ConfigError rather than be deleted. Without
    ``check`` it returns NaN.
    """
    target = Path(path).absolute()
    texts = {ARCH_FILE: json.dumps(graph.to_json(), indent=1) + "\n"}
    if metrics is not None:
        try:
            texts[METRICS_FILE] = json.dumps(metrics, indent=1, allow_nan=False) + "\n"
        except (TypeError, ValueError) as err:
            raise ConfigError(f"metrics are not JSON serialisable: {err}") from None
    write_atomically(target, weights, texts, what="bundle", error=ConfigError, metadata={"format": "morphnas.weights"})
    if not check:
        return float("nan")
    diff = max_abs_diff(reference_module(graph, weights), load(target), check_inputs(graph))
    limit = formats.TORCH_TOLERANCE if tolerance is None else tolerance
    return require_within(target, "bundle", diff, limit)


def read_bundle(path: str | Path) -> tuple[ArchGraph, Weights, dict[str, Any] | None]:
    """``(graph, weights, metrics or None)`` of a bundle or checkpoint directory; CheckpointError if unreadable."""
    directory = Path(path)
    if directory.is_file() and directory.suffix == ".pt2":
        raise CheckpointError(
            f"{directory} is a torch.export program: load it with torch.export.load(path).module() "
            "(it unpickles, so only files you trust); morphnas.load reads safetensors + JSON only"
        )
    if not directory.is_dir():
        raise CheckpointError(f"no bundle or checkpoint at {directory}: not a directory")
    missing = [name for name in (ARCH_FILE, WEIGHTS_FILE) if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{directory} is not a bundle or checkpoint: missing {', '.join(missing)}")
    try:
        graph = ArchGraph.from_json(read_json_object(directory / ARCH_FILE))
    except GraphError as err:
        raise CheckpointError(f"{directory / ARCH_FILE}: {err}") from None
    metrics = read_json_object(directory / METRICS_FILE) if (directory / METRICS_FILE).is_file() else None
    try:
        weights = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} is corrupt ({err})") from None
    return graph, weights, metrics


def load(path: str | Path) -> nn.Module:
    """The network in a bundle or checkpoint directory, compiled, with its weights, in eval mode.

    Reads ``arch.json`` and ``weights.safetensors`` only (never unpickles). Weights that do not
    fit the architecture raise CheckpointError. ``.pt2`` programs are refused: they unpickle;
    load one you trust with ``torch.export.load(path).module()``.
    """
    graph, weights, _ = read_bundle(path)
    try:
        module = compile_graph(graph, weights)
    except GraphError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return module.eval()
