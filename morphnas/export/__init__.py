"""Take a network out of morphnas: ONNX, ``torch.export`` programs, safetensors bundles, PyTorch source.

Every exporter takes ``(graph, weights, path)``, writes the file(s), reloads them as a user
would, checks their outputs against the compiled PyTorch module on batch sizes 1 and 3 and
returns the largest absolute difference (:class:`ExportMismatchError` beyond tolerance).
:func:`load` reads a bundle or checkpoint directory back (safetensors + JSON only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from morphnas.errors import ConfigError
from morphnas.export.bundle import export_bundle, load, read_bundle
from morphnas.export.formats import ONNX_TOLERANCE, TORCH_TOLERANCE, ExportError, ExportMismatchError
from morphnas.export.onnx import export_onnx, verify_onnx
from morphnas.export.preprocess import with_input_normalisation
from morphnas.export.program import export_program
from morphnas.export.source import export_python, python_source
from morphnas.ir import ArchGraph, Weights

FORMATS: dict[str, Callable[..., float]] = {
    "onnx": export_onnx,
    "pt2": export_program,
    "safetensors": export_bundle,
    "python": export_python,
}
SUFFIXES = {".onnx": "onnx", ".pt2": "pt2", ".py": "python"}


def infer_format(path: str | Path) -> str:
    """The format a path's suffix names: ``.onnx``, ``.pt2``, ``.py``; no suffix means a safetensors bundle."""
    suffix = Path(path).suffix
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if not suffix:
        return "safetensors"
    raise ConfigError(f"cannot tell the export format from {str(path)!r}; pass one of {', '.join(FORMATS)}")


def export(
    graph: ArchGraph,
    weights: Weights,
    path: str | Path,
    format: str | None = None,
    *,
    metrics: dict[str, Any] | None = None,
    check: bool = True,
    normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
) -> float:
    """Export in ``format`` (default: from the suffix of ``path``); the max abs difference from PyTorch.

    ``metrics`` go into a safetensors bundle's ``metrics.json`` and are ignored by other formats.
    ``normalisation`` (per-channel mean and std of the training data) becomes the network's first
    layer (:mod:`morphnas.export.preprocess`): the export then takes raw pixels in [0, 1].
    """
    fmt = format or infer_format(path)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    if normalisation is not None:
        graph, weights = with_input_normalisation(graph, weights, *normalisation)
        mean, std = normalisation
        metrics = {**(metrics or {}), "input": {"raw_pixels": True, "mean": list(mean), "std": list(std)}}
    if fmt == "safetensors":
        return export_bundle(graph, weights, path, metrics=metrics, check=check)
    return FORMATS[fmt](graph, weights, path, check=check)


__all__ = [
    "FORMATS", "ONNX_TOLERANCE", "TORCH_TOLERANCE", "ExportError", "ExportMismatchError", "export",
    "export_bundle", "export_onnx", "export_program", "export_python", "infer_format", "load", "python_source",
    "read_bundle", "verify_onnx",
]
