"""ONNX export with a dynamic batch dimension, checked against PyTorch with onnxruntime.

Exporter choice (torch 2.14): the ``torch.export``-based exporter (``dynamo=True``, the default
since torch 2.9; it needs ``onnxscript``). The legacy TorchScript exporter (``dynamo=False``) also
exports every morphnas layer and is about 5x faster, but it is deprecated (it warns on every
call) and traces Python-level branches as constants (it warned on ``ParametricActivationModule``),
a hazard for new layer types. Measured with the dynamo exporter and onnxruntime 1.32: max abs
difference 6e-7 on the test network with every layer type, 9e-8 on ResNet-8; its graph optimiser
folds batch norms into the preceding convolutions, so the difference is rounding, not zero.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch

from morphnas.export import formats
from morphnas.export.formats import (
    ExportError,
    check_inputs,
    max_abs_diff,
    prepare_file,
    reference_module,
    require_within,
    unwritable,
)
from morphnas.ir import ArchGraph, Weights

INPUT_NAME = "input"
OUTPUT_NAME = "output"
_EXTERNAL_DATA_BYTES = 1 << 30  # protobuf caps a model at 2 GiB: move weights out well before that


def export_onnx(
    graph: ArchGraph, weights: Weights, path: str | Path, *, check: bool = True, tolerance: float | None = None
) -> float:
    """Write ``graph`` with ``weights`` to ONNX at ``path``; return the max abs difference from PyTorch.

    The file takes one input ``input`` of shape ``(batch, *graph.input_shape)`` with a dynamic
    batch and gives ``output``. With ``check`` (the default) it is run with onnxruntime on random
    inputs of batch sizes 1 and 3 and compared with the compiled module; a difference above
    ``tolerance`` (default :data:`~morphnas.export.formats.ONNX_TOLERANCE`, read at call time)
    raises :class:`~morphnas.export.formats.ExportMismatchError`. Without ``check`` it returns NaN.
    """
    if importlib.util.find_spec("onnxscript") is None:
        raise ExportError("ONNX export needs the onnxscript package (pip install onnxscript)")
    target = prepare_file(path)
    module = reference_module(graph, weights)
    example = check_inputs(graph, batches=(2,), seed=1)  # batch 2: export specialises sizes 0 and 1
    external = sum(t.numel() * t.element_size() for t in weights.values()) > _EXTERNAL_DATA_BYTES
    if external:
        prepare_file(target.with_name(target.name + ".data"))  # where the exporter puts the weights
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, tuple(example), str(target), dynamo=True, verbose=False, external_data=external,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
    except OSError as err:
        raise unwritable(target, err) from None
    if not check:
        return float("nan")
    return verify_onnx(graph, weights, target, tolerance=tolerance)


def verify_onnx(graph: ArchGraph, weights: Weights, path: str | Path, *, tolerance: float | None = None) -> float:
    """Run the ONNX file at ``path`` with onnxruntime beside PyTorch; the max abs difference.

    Raises :class:`~morphnas.export.formats.ExportMismatchError` above ``tolerance``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    diff = max_abs_diff(reference_module(graph, weights), run, check_inputs(graph))
    limit = formats.ONNX_TOLERANCE if tolerance is None else tolerance
    return require_within(Path(path), "ONNX", diff, limit)

