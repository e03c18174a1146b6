"""``torch.export`` programs (``.pt2``) with a dynamic batch dimension.

A ``.pt2`` file is torch's own archive format and :func:`torch.export.load` unpickles parts of
it, so load only ``.pt2`` files you produced or trust. :func:`morphnas.load` therefore refuses
them; load one with ``torch.export.load(path).module()``. The program is captured in eval mode
(batch norm uses its running statistics) and its module cannot be switched to training with
``.train()``; to fine-tune, export a safetensors bundle instead.
"""

from __future__ import annotations

from pathlib import Path

import torch

from morphnas.export import formats
from morphnas.export.formats import (
    check_inputs,
    max_abs_diff,
    prepare_file,
    reference_module,
    require_within,
    unwritable,
)
from morphnas.ir import ArchGraph, Weights


def export_program(
    graph: ArchGraph, weights: Weights, path: str | Path, *, check: bool = True, tolerance: float | None = None
) -> float:
    """Write ``torch.export.export`` of the compiled module to ``path``; the max abs difference on reload.

    With ``check``, the file is reloaded with :func:`torch.export.load` and run on batch sizes 1
    and 3 beside the compiled module; above ``tolerance`` (default ``TORCH_TOLERANCE``) raises
    :class:`~morphnas.export.formats.ExportMismatchError`. Without ``check`` it returns NaN.
    """
    target = prepare_file(path)
    module = reference_module(graph, weights)
    example = tuple(check_inputs(graph, batches=(2,), seed=1))  # batch 2: export specialises sizes 0 and 1
    program = torch.export.export(module, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    try:
        torch.export.save(program, str(target))
    except OSError as err:
        raise unwritable(target, err) from None
    if not check:
        return float("nan")
    reloaded = torch.export.load(str(target)).module()  # our own file, just written
    diff = max_abs_diff(module, reloaded, check_inputs(graph))
    limit = formats.TORCH_TOLERANCE if tolerance is None else tolerance
    return require_within(target, "torch.export", diff, limit)
