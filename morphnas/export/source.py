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
import inspect
import keyword
import sys
import textwrap
from collections.abc import Callable
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
from morphnas.ir import (
    Activation,
    ArchGraph,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Edge,
    Flatten,
    GlobalAvgPool,
    Identity,
    Layer,
    Linear,
    ParametricActivation,
    Pool2d,
    ShortcutA,
    Weights,
)
from morphnas.ir.layers import ShortcutAModule

CLASS_NAME = "Model"
_SHADOWED = {"torch", "safetensors", "pathlib", "__future__"}  # what the generated file imports
_ACTIVATIONS = {
    "relu": "torch.relu",
    "tanh": "torch.tanh",
    "sigmoid": "torch.sigmoid",
    "gelu": "F.gelu",
    "elu": "F.elu",
    "relu6": "F.relu6",
    "silu": "F.silu",
    "hardswish": "F.hardswish",
    "hardsigmoid": "F.hardsigmoid",
}
_PACT_CLASS = '''
class ParametricActivation(nn.Module):
    """Eq. 8 of Wei et al. (2017): ``(1 - a) * phi(x) + a * x`` with a learnable slope ``a``."""

    def __init__(self, phi, num_parameters: int = 1) -> None:
        super().__init__()
        self.phi = phi
        self.weight = nn.Parameter(torch.ones(num_parameters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.weight.view(-1, *([1] * (x.dim() - 2))) if self.weight.numel() > 1 else self.weight
        return (1 - a) * self.phi(x) + a * x
'''
_SHORTCUT_CLASS = inspect.getsource(ShortcutAModule)  # the compiled graph's own module, verbatim
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
            submodule = _submodule(edge.layer)
            if submodule is not None:
                init.append(_assign_submodule(edge.name, submodule))
            exprs.append(_call(edge, var[edge.src]))
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
    layer_types = {e.layer.type for e in graph.edges()}
    pact = any(isinstance(e.layer, ParametricActivation) and e.layer.kind != "relu" for e in graph.edges())
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
        _PACT_CLASS if pact else "",
        _SHORTCUT_CLASS if ShortcutA.type in layer_types else "",
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


def _assign_submodule(name: str, constructor: str) -> str:
    return f"self.{name} = {constructor}"  # the IR rejects layer names that are keywords


def _float(value: float) -> str:
    return repr(float(value))


def _submodule(layer: Layer) -> str | None:
    """The constructor of the submodule computing ``layer``, or None for layers emitted inline."""
    builder = _SUBMODULES.get(type(layer))
    if builder is not None:
        return builder(layer)
    if type(layer) in _INLINE:
        return None
    raise ExportError(f"python export does not support layer type {layer.type!r}")


def _call(edge: Edge, value: str) -> str:
    """The expression computing ``edge`` from the variable ``value``."""
    inline = _INLINE.get(type(edge.layer))
    return inline(edge.layer, value) if inline is not None else f"self.{edge.name}({value})"


def _conv(layer: Conv2d) -> str:
    return (
        f"nn.Conv2d({layer.in_channels}, {layer.out_channels}, {layer.kernel_size}, stride={layer.stride}, "
        f"padding={layer.padding}, groups={layer.groups}, bias={layer.bias})"
    )


def _batchnorm(layer: BatchNorm2d) -> str:
    cls = "BatchNorm1d" if isinstance(layer, BatchNorm1d) else "BatchNorm2d"
    return f"nn.{cls}({layer.num_features}, eps={_float(layer.eps)}, momentum={_float(layer.momentum)})"


def _pact(layer: ParametricActivation) -> str:
    if layer.kind == "relu":  # eq. 8 with phi = relu is PReLU with slope a
        return f"nn.PReLU({layer.num_parameters}, init=1.0)"
    return f"ParametricActivation({_ACTIVATIONS[layer.kind]}, {layer.num_parameters})"


def _shortcut(layer: ShortcutA) -> str:
    cmap = _int_tuple(layer.channel_map)
    return f"ShortcutAModule({layer.in_channels}, {layer.out_channels}, {layer.stride}, {cmap})"


def _int_tuple(values: tuple[int, ...]) -> str:
    """A tuple of ints as source: ``tuple(range(a, b))`` when contiguous, else a literal wrapped at 100 columns."""
    if len(values) > 1 and tuple(values) == tuple(range(values[0], values[0] + len(values))):
        return f"tuple(range({values[0]}, {values[0] + len(values)}))"
    literal = repr(tuple(values))
    if len(literal) <= 60:
        return literal
    lines = textwrap.wrap(", ".join(map(str, values)) + ",", width=96)
    return "(\n" + "".join(f"            {line}\n" for line in lines) + "        )"


def _identity(layer: Identity, value: str) -> str:
    return value if layer.scale == 1.0 else f"{value} * {_float(layer.scale)}"


def _pool(layer: Pool2d, value: str) -> str:
    fn = "F.max_pool2d" if layer.mode == "max" else "F.avg_pool2d"
    return f"{fn}({value}, {layer.kernel_size}, {layer.stride}, {layer.padding})"


_SUBMODULES: dict[type, Callable[..., str]] = {
    Conv2d: _conv,
    BatchNorm2d: _batchnorm,
    BatchNorm1d: _batchnorm,
    ParametricActivation: _pact,
    ShortcutA: _shortcut,
    Linear: lambda layer: f"nn.Linear({layer.in_features}, {layer.out_features}, bias={layer.bias})",
    Dropout: lambda layer: f"nn.Dropout({_float(layer.p)})",
}
_INLINE: dict[type, Callable[..., str]] = {
    Activation: lambda layer, value: f"{_ACTIVATIONS[layer.kind]}({value})",
    Identity: _identity,
    Pool2d: _pool,
    GlobalAvgPool: lambda layer, value: f"{value}.mean(dim=(2, 3))",
    Flatten: lambda layer, value: f"torch.flatten({value}, 1)",
}


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

