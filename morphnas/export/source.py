"""Standalone PyTorch source: one ``.py`` file defining the network as a plain ``nn.Module``.

The generated file imports only ``torch`` (and ``safetensors`` inside its ``load`` function), so
users can copy it into their own code without morphnas. Its ``forward`` is straight-line code
generated from the graph in topological order. Local names are recycled like registers (``x``,
``out``, ``out1``, ...), so chains read ``x = self.conv(x)`` as in torchvision and a forward pass
keeps about as many activations alive as the graph is wide. Submodules are named after the
graph's layer edges, so the module's ``state_dict`` is exactly the flat weights dict, saved beside
the file as ``<stem>.safetensors``.
"""

from __future__ import annotations

import importlib.util
import keyword
import sys
from pathlib import Path
from types import ModuleType

from safetensors.torch import save_file

from morphnas.errors import ConfigError
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
from morphnas.ir import LAYER_TYPES, ArchGraph, Edge, Weights

CLASS_NAME = "Model"
_SHADOWED = {"torch", "safetensors", "pathlib", "__future__"}  # what the generated file imports
_LOAD_FUNCTION = '''
def load(path: str | Path | None = None) -> {class_name}:
    """Build the network and load its weights (default: the ``.safetensors`` file beside this one).

    The module is returned in eval mode; call ``.train()`` on it to fine-tune.
    """
    from safetensors.torch import load_file

    weights = Path(__file__).with_suffix(".safetensors") if path is None else Path(path)
    model = {class_name}()
    model.load_state_dict(load_file(str(weights)))
    return model.eval()
'''


def export_python(
    graph: ArchGraph, weights: Weights, path: str | Path, *, check: bool = True, tolerance: float | None = None
) -> float:
    """Write standalone source to ``path`` (a ``.py`` file) and weights to ``<stem>.safetensors`` beside it.

    With ``check``, the written file is imported (it has no morphnas import), its ``load()`` run
    and its outputs compared with the compiled module on batch sizes 1 and 3; above ``tolerance``
    (default ``TORCH_TOLERANCE``) raises :class:`~morphnas.export.formats.ExportMismatchError`.
    Without ``check`` it returns NaN.
    """
    target = Path(path)
    if target.suffix != ".py":
        raise ConfigError(f"python export needs a .py file name, got {str(path)!r}")
    if not target.stem.isidentifier() or keyword.iskeyword(target.stem):
        raise ConfigError(f"python export {target.name!r}: the file name must be an importable module name")
    if target.stem in _SHADOWED:
        raise ConfigError(f"python export {target.name!r} would shadow the {target.stem!r} module it imports")
    target = prepare_file(target)
    weights_path = prepare_file(target.with_suffix(".safetensors"))
    code = python_source(graph)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    try:
        save_file(tensors, str(weights_path), metadata={"format": "morphnas.weights"})
        target.write_text(code)
    except OSError as err:
        raise unwritable(target, err) from None
    if not check:
        return float("nan")
    module = _import_file(target).load()
    diff = max_abs_diff(reference_module(graph, weights), module, check_inputs(graph))
    limit = formats.TORCH_TOLERANCE if tolerance is None else tolerance
    return require_within(target, "python", diff, limit)


def python_source(graph: ArchGraph, class_name: str = CLASS_NAME) -> str:
    """The standalone source of ``graph``: helper classes, ``class_name``, and ``load()``."""
    shapes = graph.shapes()
    names = _Names()
    init: list[str] = []
    body: list[str] = []
    var: dict[str, str] = {graph.source: names.take()}
    uses = {blob: len(graph.out_edges(blob)) for blob in graph.blobs()}
    for blob in graph.topological_blobs():
        if blob == graph.source:
            continue
        edges = graph.in_edges(blob)
        exprs = []
        for edge in edges:
            inline = edge.layer.source_inline(var[edge.src])
            if inline is None:
                init.append(_assign_submodule(edge))
            exprs.append(inline if inline is not None else f"self.{edge.name}({var[edge.src]})")
        if len(exprs) == 1:
            value = exprs[0]
        elif graph.merge(blob) == "concat":
            value = f"torch.cat([{', '.join(exprs)}], dim=1)"
        else:
            value = (" * " if graph.merge(blob) == "mul" else " + ").join(exprs)
        dying = []
        for edge in edges:
            uses[edge.src] -= 1
            if uses[edge.src] == 0 and var[edge.src] not in dying:
                dying.append(var[edge.src])
        names.release(dying)  # the target may overwrite an input that dies here
        var[blob] = names.take()
        if value != var[blob]:
            body.append(f"{var[blob]} = {value}")
    body.append(f"return {var[graph.sink]}")
    order = {kind: i for i, kind in enumerate(LAYER_TYPES)}
    layers = sorted((e.layer for e in graph.edges()), key=lambda layer: order[layer.type])
    helpers = dict.fromkeys(layer.source_helper() for layer in layers)  # in the order of the layer types
    out_shape = shapes[graph.sink]
    model = (
        f"class {class_name}(nn.Module):\n"
        f'    """The exported network: input (batch, {", ".join(map(str, graph.input_shape))}), '
        f'output (batch, {", ".join(map(str, out_shape))})."""\n\n'
        f"    input_shape = {tuple(graph.input_shape)!r}\n"
        f"    output_shape = {tuple(out_shape)!r}\n\n"
        "    def __init__(self) -> None:\n"
        "        super().__init__()\n"
        + "".join(f"        {line}\n" for line in init)
        + "\n    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        + "".join(f"        {line}\n" for line in body)
    )
    parts = [
        _header(graph, out_shape)
        + "\nfrom __future__ import annotations\n\nfrom pathlib import Path\n\nimport torch\n"
        + ("import torch.nn.functional as F\n" if "F." in model else "")
        + "from torch import nn",
        *helpers,
        model,
        _LOAD_FUNCTION.format(class_name=class_name),
    ]
    return "\n\n\n".join(part.strip("\n") for part in parts if part) + "\n"


def _header(graph: ArchGraph, out_shape: tuple[int, ...]) -> str:
    from morphnas import __version__  # at call time: morphnas/__init__.py may import this package

    layers = sum(1 for _ in graph.edges())
    return (
        f'"""A network exported by morphnas {__version__}: {layers} layers, input {tuple(graph.input_shape)}, '
        f"output {tuple(out_shape)}.\n\n"
        "Standalone: needs torch, and safetensors to load the weights. Usage::\n\n"
        "    model = load()  # weights from the .safetensors file beside this one, eval mode\n"
        "    output = model(batch)\n"
        '"""\n'
    )


class _Names:
    """Local variable names, recycled like registers: ``x``, then ``out``, ``out1``, ``out2``, ...

    A value takes the first free name; a name frees up once its value's last consumer has read
    it. Chains thus read ``x = self.conv(x)`` and at most as many values as the graph is wide
    stay alive during a forward pass.
    """

    def __init__(self) -> None:
        self.free: list[str] = []
        self.count = 0

    def take(self) -> str:
        if self.free:
            return self.free.pop(0)
        self.count += 1
        return ["x", "out"][self.count - 1] if self.count <= 2 else f"out{self.count - 2}"

    def release(self, names: list[str]) -> None:
        self.free = sorted(set(self.free) | set(names), key=_name_order)


def _name_order(name: str) -> int:
    fixed = {"x": 0, "out": 1}
    return fixed[name] if name in fixed else int(name[3:]) + 1


def _assign_submodule(edge: Edge) -> str:
    constructor = edge.layer.source_module()
    if constructor is None:
        raise ExportError(f"python export does not support layer type {edge.layer.type!r}")
    return f"self.{edge.name} = {constructor}"  # the IR rejects layer names that are keywords


def _import_file(path: Path) -> ModuleType:
    """Import the generated file under a private name (it has no morphnas import)."""
    name = f"_morphnas_export_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py path always has a spec
        raise ExportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop(name, None)
    spec.loader.exec_module(module)
    return module

