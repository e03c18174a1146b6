"""What every export format shares: its errors, tolerances, output paths and the logit check.

Each exporter writes its file(s), reloads them the way a user would and runs them beside the
PyTorch module compiled from the same graph and weights, on random inputs of batch sizes 1 and 3
(the batch dimension is dynamic in every format). The largest absolute difference of the outputs
is returned; beyond the format's tolerance the exporter raises :class:`ExportMismatchError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from morphnas.errors import ConfigError, MorphnasError
from morphnas.ir import ArchGraph, Weights, compile_graph

ONNX_TOLERANCE = 1e-4  # onnxruntime fuses and reorders float32 arithmetic
TORCH_TOLERANCE = 1e-5  # .pt2, bundles and generated source run the same PyTorch kernels
CHECK_BATCHES = (1, 3)


class ExportError(MorphnasError):
    """An export cannot be written (unsupported layer, missing exporter dependency, ...)."""


class ExportMismatchError(ExportError):
    """An exported network does not reproduce the source module's outputs within tolerance.

    The exported file stays where it was written so that it can be inspected; ``max_abs_diff``
    and ``tolerance`` give the figures. The CLI exits with status 1 for it (not 2: the user did
    nothing wrong).
    """

    def __init__(self, message: str, *, path: Path, max_abs_diff: float, tolerance: float) -> None:
        super().__init__(message)
        self.path = path
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance


def reference_module(graph: ArchGraph, weights: Weights) -> nn.Module:
    """The compiled PyTorch module every export is compared with, in eval mode."""
    return compile_graph(graph, weights).eval()


def check_inputs(graph: ArchGraph, batches: Iterable[int] = CHECK_BATCHES, seed: int = 0) -> list[torch.Tensor]:
    """Standard normal inputs of ``graph.input_shape`` for each batch size, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(b, *graph.input_shape, generator=generator) for b in batches]


def max_abs_diff(
    reference: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], inputs: Iterable[torch.Tensor]
) -> float:
    """The largest ``|run(x) - reference(x)|`` over all ``inputs`` (NaN anywhere counts as infinite)."""
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            expected = reference(x)
            got = torch.as_tensor(run(x))
            if got.shape != expected.shape:
                raise ExportError(f"exported network gives shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
            diff = (got.to(expected.dtype) - expected).abs().max().item() if expected.numel() else 0.0
            worst = max(worst, diff if diff == diff else float("inf"))
    return worst


def require_within(path: Path, what: str, diff: float, tolerance: float) -> float:
    """Return ``diff``; raise :class:`ExportMismatchError` when it exceeds ``tolerance``."""
    if not diff <= tolerance:
        raise ExportMismatchError(
            f"{what} export {path} differs from PyTorch by up to {diff:.3g} (tolerance {tolerance:g}); "
            "the file was kept for inspection",
            path=path, max_abs_diff=diff, tolerance=tolerance,
        )
    return diff


def prepare_file(path: str | Path) -> Path:
    """An output file path whose directory exists and is writable; ConfigError otherwise.

    Missing parent directories are created. An existing file is replaced; a directory is not.
    """
    target = Path(path).absolute()
    if target.is_dir():
        raise ConfigError(f"cannot write {target}: it is a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot write {target}: {err.strerror or err}") from None
    if not target.parent.is_dir() or not os.access(target.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {target}: its directory is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise ConfigError(f"cannot write {target}: the file is not writable")
    return target


def unwritable(path: Path, err: OSError) -> ConfigError:
    """The ConfigError for an OSError met while writing ``path``."""
    return ConfigError(f"cannot write {path}: {err.strerror or err}")
