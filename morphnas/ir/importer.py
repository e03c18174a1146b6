"""Import a PyTorch network: trace it with ``torch.fx``, map every node onto the IR, check it.

Each node of the traced program becomes a layer edge into a blob named after the node, its
weights carried over under ``"<edge>.<param>"``; an addition becomes an ``add`` blob, a product
of two tensors (squeeze-and-excitation's ``scale * x``) a ``mul`` blob and ``torch.cat`` along
the channels a ``concat`` blob, each fed by identity edges. The network is traced in eval mode,
and torchvision's stochastic depth, the identity in eval mode, is imported as the identity: an
imported EfficientNet trains without it. Every node's
shape is checked against the traced shapes, and the imported graph must compute the module's
outputs on random inputs, both in float64 and eval mode, within 1e-10 relative (or within
the module's own float32 error scaled to float64 where that is larger): a float32 comparison
would refuse a trained EfficientNet, whose own float32 outputs are 2.5e-4 from its float64 ones. Whatever the IR cannot
express is refused with one line naming the node and its op: nothing is approximated.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import math
import operator
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from morphnas.errors import ConfigError, GraphError, TorchImportError
from morphnas.ir.compile import Weights, compile_graph, rel_err
from morphnas.ir.graph import _RESERVED, ArchGraph
from morphnas.ir.layers import (
    ACTIVATIONS,
    Activation,
    AdaptiveAvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    ChannelShuffle,
    ChannelSlice,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Identity,
    Layer,
    Linear,
    Pool2d,
    Shape,
)

TOLERANCE = 1e-10  # float64, relative to the largest output (docs/design.md#exactness)
ROUNDOFF_RATIO = 2.0**-53 / 2.0**-24  # float64's unit roundoff over float32's
CONDITIONING = 10.0  # headroom over the float32 error scaled to float64 (two orders of the same sums)


@dataclass(frozen=True)
class Imported:
    """An imported network: its graph, its weights and how far the import is from the original."""

    graph: ArchGraph
    weights: Weights
    max_rel_err: float  # float64
    tolerance: float  # what it had to meet: 1e-10, or more for an ill-conditioned module (see ``_check``)

    def __iter__(self):  # ``graph, weights, err = from_torch(...)``
        return iter((self.graph, self.weights, self.max_rel_err))


class _Refused(Exception):
    """Raised inside the mapping with the reason; turned into one TorchImportError line."""


def _refuse(reason: str) -> _Refused:
    return _Refused(reason)


def _square(value: Any, what: str) -> int:
    """``3`` or ``(3, 3)`` -> 3; a non-square value is refused."""
    if isinstance(value, int):
        return value
    values = tuple(value)
    if len(set(values)) != 1:
        raise _refuse(f"non-square {what} {values} is not in the IR")
    return int(values[0])


# --- modules -------------------------------------------------------------------------------------

def _conv(m: nn.Conv2d) -> Layer:
    if m.padding_mode != "zeros":
        raise _refuse(f"padding_mode={m.padding_mode!r} is not in the IR (zero padding only)")
    dilation = _square(m.dilation, "dilation")
    if isinstance(m.padding, str):
        if m.padding != "valid":
            raise _refuse(f"padding={m.padding!r} is not in the IR (give the padding as a number)")
        padding = 0
    else:
        padding = _square(m.padding, "padding")
    kernel, stride = _square(m.kernel_size, "kernel"), _square(m.stride, "stride")
    return Conv2d(m.in_channels, m.out_channels, kernel, stride, padding, m.groups, m.bias is not None, dilation)


def _batchnorm(m: nn.modules.batchnorm._BatchNorm) -> Layer:
    if not m.affine or not m.track_running_stats:
        raise _refuse("batch norm without affine parameters or running statistics is not in the IR")
    if m.momentum is None:
        raise _refuse("batch norm with momentum=None (cumulative average) is not in the IR")
    cls = BatchNorm2d if isinstance(m, nn.BatchNorm2d) else BatchNorm1d
    return cls(m.num_features, float(m.eps), float(m.momentum))


def _pool(m: nn.MaxPool2d | nn.AvgPool2d) -> Layer:
    if isinstance(m, nn.MaxPool2d):
        if _square(m.dilation, "dilation") != 1:
            raise _refuse(f"dilation={m.dilation} is not in the IR")
        if m.return_indices:
            raise _refuse("return_indices=True is not in the IR")
    elif not m.count_include_pad or m.divisor_override is not None:
        raise _refuse("average pooling without count_include_pad or with divisor_override is not in the IR")
    kernel = _square(m.kernel_size, "kernel")
    stride = kernel if m.stride is None else _square(m.stride, "stride")
    return Pool2d("max" if isinstance(m, nn.MaxPool2d) else "avg", kernel, stride, _square(m.padding, "padding"))


def _gelu(m: nn.GELU) -> Layer:
    if m.approximate != "none":
        raise _refuse(f"GELU approximate={m.approximate!r} is not in the IR")
    return Activation("gelu")


def _elu(m: nn.ELU) -> Layer:
    if m.alpha != 1.0:
        raise _refuse(f"ELU alpha={m.alpha} is not in the IR (alpha 1 only)")
    return Activation("elu")


def _flatten(m: nn.Flatten) -> str:
    if m.start_dim != 1 or m.end_dim != -1:
        raise _refuse(f"flatten from dim {m.start_dim} to {m.end_dim} is not in the IR (dims 1 to -1 only)")
    return "flatten"


def _adaptive(m: nn.AdaptiveAvgPool2d) -> Any:
    return ("adaptive", m.output_size)


# A module type -> its layer spec, or a marker handled by the shape-aware code below.
_MODULES: dict[type, Callable[[Any], Any]] = {
    nn.Conv2d: _conv,
    nn.BatchNorm2d: _batchnorm,
    nn.BatchNorm1d: _batchnorm,
    nn.ReLU: lambda m: Activation("relu"),
    nn.Tanh: lambda m: Activation("tanh"),
    nn.Sigmoid: lambda m: Activation("sigmoid"),
    nn.ReLU6: lambda m: Activation("relu6"),
    nn.SiLU: lambda m: Activation("silu"),
    nn.Hardswish: lambda m: Activation("hardswish"),
    nn.Hardsigmoid: lambda m: Activation("hardsigmoid"),
    nn.GELU: _gelu,
    nn.ELU: _elu,
    nn.MaxPool2d: _pool,
    nn.AvgPool2d: _pool,
    nn.AdaptiveAvgPool2d: _adaptive,
    nn.Linear: lambda m: Linear(m.in_features, m.out_features, m.bias is not None),
    nn.Dropout: lambda m: Dropout(float(m.p)),
    nn.Flatten: _flatten,
    nn.Identity: lambda m: "alias",
    nn.ChannelShuffle: lambda m: ChannelShuffle(m.groups),
}

# An activation function or tensor method -> its kind; its other arguments are refused, so a
# parametrised one (F.elu's alpha) imports at its defaults only.
_ACTIVATION_FUNCTIONS = {spec.fn: kind for kind, spec in ACTIVATIONS.items()} | {nn.functional.relu: "relu"}
_ACTIVATION_METHODS = {kind: kind for kind in ACTIVATIONS if hasattr(torch.Tensor, kind)} | {"relu_": "relu"}
_ADDS = (operator.add, operator.iadd, torch.add)
_MULS = (operator.mul, operator.imul, torch.mul)
# Arithmetic on sizes read from a tensor (``C // groups``), evaluated at import: the shapes are fixed.
_SIZE_ARITHMETIC = {operator.add: operator.add, operator.sub: operator.sub, operator.mul: operator.mul,
                    operator.floordiv: operator.floordiv}
_VIEWS = ("view", "reshape")


class _Batch:
    """The batch size in a traced ``x.size()``: unknown at import, so it may only be passed on."""

    def __repr__(self) -> str:
        return "N"


BATCH = _Batch()


@dataclass(frozen=True)
class _Grouped:
    """A 5-D view (N, groups, C / groups, H, W) of a blob, on the way to a channel shuffle; ``transposed``
    once its dims 1 and 2 are swapped (then a view back to (N, C, H, W) is the shuffle)."""

    blob: str
    groups: int
    transposed: bool = False

    def shape(self, image: Shape) -> Shape:
        c, h, w = image
        dims = (self.groups, c // self.groups)
        return (*(dims[::-1] if self.transposed else dims), h, w)


# --- the mapping ---------------------------------------------------------------------------------

class _Importer:
    def __init__(self, traced: fx.GraphModule, input_shape: Shape) -> None:
        self.traced = traced
        self.modules = dict(traced.named_modules())
        self.graph = ArchGraph(input_shape)
        self.weights: Weights = {}
        self.value: dict[fx.Node, str] = {}  # fx node -> IR blob
        self.shape: dict[str, Shape] = {}  # IR blob -> shape
        self.called: dict[str, str] = {}  # module target -> first node calling it
        self.sizes: dict[fx.Node, Any] = {}  # fx node -> a size, or a tuple of sizes (BATCH for the batch)
        self.pieces: dict[fx.Node, tuple[str, list[tuple[int, int]]]] = {}  # chunk / split -> (blob, slices)
        self.grouped: dict[fx.Node, _Grouped] = {}  # a view on the way to a channel shuffle

    def run(self) -> None:
        for node in self.traced.graph.nodes:
            try:
                self.node(node)
            except (_Refused, GraphError) as err:
                raise TorchImportError(f"cannot import node {node.name!r} ({_op(node, self.modules)}): {err}") from None

    def node(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            if self.value:
                raise _refuse("networks with more than one input are not in the IR")
            blob = self.graph.add_blob("input")
            self.shape[blob] = self.graph.input_shape
            self.value[node] = blob
            return
        if node.op == "output":
            self.output(node)
            return
        if node.op == "get_attr":
            raise _refuse("reading a parameter or buffer directly is not in the IR")
        if node.op == "call_module":
            self.call_module(node)
        else:
            self.call_function(node)
        self.check_shape(node)

    # one node ---------------------------------------------------------------------------------
    def call_module(self, node: fx.Node) -> None:
        module = self.modules[node.target]
        mapper = _MODULES.get(type(module))
        if mapper is None:
            raise _refuse(f"{type(module).__name__} is not in the IR yet")
        self.only_args(node, 1)
        spec = mapper(module)
        if getattr(module, "ceil_mode", False):
            self.ceil_as_floor(node, spec)
        if spec == "alias":
            self.value[node] = self.input_blob(node.args[0])
            return
        if spec == "flatten":
            self.flatten(node, node.args[0])
            return
        if isinstance(spec, tuple) and spec[0] == "adaptive":
            self.adaptive(node, node.args[0], spec[1])
            return
        own = module.state_dict()
        if own:
            if node.target in self.called:
                raise _refuse(
                    f"module {node.target!r} is called again (first by node {self.called[node.target]!r}): "
                    "shared weights are not in the IR"
                )
            self.called[node.target] = node.name
        name = self.layer(node, node.args[0], spec)
        for key, tensor in own.items():
            self.weights[f"{name}.{key}"] = tensor.detach().clone()

    def call_function(self, node: fx.Node) -> None:
        target = node.target
        if node.op == "call_function" and target is operator.getitem:
            self.getitem(node)
        elif node.op == "call_function" and target in _SIZE_ARITHMETIC and any(a in self.sizes for a in node.args):
            self.size_arithmetic(node)
        elif (node.op == "call_method" and target == "size") or (
                node.op == "call_function" and target is getattr and node.args[1:] == ("shape",)):
            self.size(node)
        elif self.tensor_op(node, _VIEWS, (torch.reshape,)):
            self.view(node)
        elif self.tensor_op(node, ("transpose",), (torch.transpose,)):
            self.transpose(node)
        elif node.op == "call_method" and target == "contiguous":
            self.only_args(node, 1)
            self.alias(node, node.args[0])
        elif self.tensor_op(node, ("chunk", "split"), (torch.chunk, torch.split)):
            self.split(node)
        elif self.tensor_op(node, ("mean",), (torch.mean,)):
            self.mean(node)
        elif node.op == "call_function" and target in _ADDS or (node.op == "call_method" and target in ("add", "add_")):
            self.add(node)
        elif node.op == "call_function" and target in _MULS or (node.op == "call_method" and target in ("mul", "mul_")):
            self.mul(node)
        elif node.op == "call_function" and _stochastic_depth(target):
            training = node.args[3] if len(node.args) > 3 else node.kwargs.get("training", True)
            if training:
                raise _refuse("stochastic depth in training mode is not in the IR")
            self.value[node] = self.input_blob(node.args[0])  # eval mode: the identity
        elif node.op == "call_function" and target in _ACTIVATION_FUNCTIONS:
            self.only_args(node, 1, allowed={"inplace"})
            self.layer(node, node.args[0], Activation(_ACTIVATION_FUNCTIONS[target]))
        elif node.op == "call_method" and target in _ACTIVATION_METHODS:
            self.only_args(node, 1)
            self.layer(node, node.args[0], Activation(_ACTIVATION_METHODS[target]))
        elif (node.op == "call_function" and target is torch.flatten) or (
            node.op == "call_method" and target == "flatten"
        ):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if start != 1 or end != -1:
                raise _refuse(f"flatten from dim {start} to {end} is not in the IR (dims 1 to -1 only)")
            self.flatten(node, node.args[0])
        elif node.op == "call_function" and target is torch.cat:
            self.cat(node)
        elif node.op == "call_function" and target is nn.functional.adaptive_avg_pool2d:
            self.adaptive(node, node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs["output_size"])
        else:
            raise _refuse(f"{_op(node, self.modules)} is not in the IR")

    def output(self, node: fx.Node) -> None:
        result = node.args[0]
        if not isinstance(result, fx.Node):
            raise _refuse("networks with more than one output are not in the IR")
        blob = self.input_blob(result)
        if self.graph.nx.out_degree(blob) or blob == "input":
            raise _refuse("the output must be a value nothing else reads")
        traced = tuple(result.meta["tensor_meta"].shape[1:])
        if traced != self.shape[blob]:
            raise _refuse(f"output shape {traced} is not the IR's {self.shape[blob]}")

    # sizes, views, slices and channel shuffles -------------------------------------------------
    def tensor_op(self, node: fx.Node, methods: tuple[str, ...], functions: tuple[Any, ...]) -> bool:
        return (node.op == "call_method" and node.target in methods) or (
            node.op == "call_function" and node.target in functions)

    def size(self, node: fx.Node) -> None:
        """``x.size()`` (or ``x.size(d)``): the traced shapes are the IR's, so these are numbers."""
        sizes = (BATCH, *self.shape[self.input_blob(node.args[0])])
        dim = None if node.target is getattr else _arg(node, 1, "dim", None)
        self.sizes[node] = sizes if dim is None else sizes[dim]

    def size_arithmetic(self, node: fx.Node) -> None:
        values = [self.sizes.get(a, a) if isinstance(a, fx.Node) else a for a in node.args]
        if node.kwargs or not all(isinstance(v, int) for v in values):
            raise _refuse("only +, -, * and // of sizes (not of the batch size) are in the IR")
        self.sizes[node] = _SIZE_ARITHMETIC[node.target](*values)

    def getitem(self, node: fx.Node) -> None:
        """A size of ``x.size()``, a piece of a chunk or split (a channel slice), or ``x[:, a:b]``."""
        source, index = node.args
        if source in self.sizes:
            if not isinstance(self.sizes[source], tuple) or not isinstance(index, int):
                raise _refuse(f"indexing a size with {index!r} is not in the IR")
            self.sizes[node] = self.sizes[source][index]
        elif source in self.pieces:
            blob, slices = self.pieces[source]
            self.channel_slice(node, blob, *slices[index])
        elif (isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None)
              and isinstance(index[1], slice) and index[1].step in (None, 1)):
            blob = self.input_blob(source)
            start, stop, _ = index[1].indices(self.shape[blob][0])
            if stop <= start:
                raise _refuse(f"an empty channel slice {start}:{stop} is not in the IR")
            self.channel_slice(node, blob, start, stop)
        else:
            raise _refuse(f"indexing with {index!r} is not in the IR (x[:, a:b] along the channels only)")

    def channel_slice(self, node: fx.Node, blob: str, start: int, stop: int) -> None:
        if (start, stop) == (0, self.shape[blob][0]):
            self.value[node] = blob
            return
        name = self.name(node.name)
        dst = self.graph.add_blob(name)
        layer = ChannelSlice(start, stop)
        self.graph.add_layer(name, blob, dst, layer)
        self.shape[dst] = layer.output_shape(self.shape[blob])
        self.value[node] = dst

    def split(self, node: fx.Node) -> None:
        """``chunk(n, dim=1)`` and ``split(size or sizes, dim=1)`` as torch cuts the channels."""
        chunk = node.target in ("chunk", torch.chunk)
        dim = _arg(node, 2, "dim", 0)
        blob = self.input_blob(node.args[0])
        if dim not in (1, 1 - len(self.shape[blob]) - 1):
            raise _refuse(f"splitting along dim {dim} is not in the IR (channels only)")
        how = _arg(node, 1, "chunks" if chunk else "split_size_or_sections", None)
        how = [self.sizes.get(n, n) for n in how] if isinstance(how, list | tuple) else self.sizes.get(how, how)
        if not (isinstance(how, int) and how > 0 or isinstance(how, list) and all(isinstance(n, int) for n in how)):
            raise _refuse(f"splitting by {how!r} is not in the IR")
        c = self.shape[blob][0]
        if chunk:
            how = -(-c // how)
        sizes = [how] * (c // how) + ([c % how] if c % how else []) if isinstance(how, int) else list(how)
        if sum(sizes) != c:
            raise _refuse(f"sizes {sizes} do not add up to the {c} channels")
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.pieces[node] = (blob, [(a, a + n) for a, n in zip(starts, sizes, strict=True)])

    def view(self, node: fx.Node) -> None:
        """The views of a channel shuffle (N, C, H, W) -> (N, g, C / g, H, W), transposed -> (N, C, H, W);
        a view to (N, -1) flattens; a view to the same shape is the identity."""
        source = node.args[0]
        dims = node.args[1:] or (node.kwargs.get("shape", ()),)
        if len(dims) == 1 and isinstance(dims[0], list | tuple):  # view((N, C)) or reshape(x, (N, C))
            dims = dims[0]
        dims = tuple(self.sizes.get(d, d) if isinstance(d, fx.Node) else d for d in dims)
        blob_shape = self.shape.get(self.value.get(source), ())
        if dims[:1] == (-1,) and all(isinstance(d, int) and d > 0 for d in dims[1:]) \
                and math.prod(dims[1:]) == math.prod(blob_shape):
            dims = (BATCH, *dims[1:])  # view(-1, C * H * W): the batch is what is left
        if dims[:1] != (BATCH,) or any(d is BATCH for d in dims[1:]):
            raise _refuse(f"a view to {dims} is not in the IR (the batch dim must stay first and alone)")
        rest = dims[1:]
        if source in self.grouped:
            grouped = self.grouped[source]
            shape = self.shape[grouped.blob]
            if not grouped.transposed or not _fits(rest, shape):
                raise _refuse(f"a view of {grouped.shape(shape)} to {rest} is not in the IR")
            self.layer(node, source, ChannelShuffle(grouped.groups), src=grouped.blob)
            return
        blob = self.input_blob(source)
        shape = self.shape[blob]
        if _fits(rest, shape):
            self.value[node] = blob
        elif _fits(rest, (math.prod(shape),)):
            self.flatten(node, source)
        elif len(shape) == 3 and len(rest) == 4 and _fits(rest[2:], shape[1:]) and isinstance(rest[0], int) \
                and rest[0] > 0 and shape[0] % rest[0] == 0 and _fits(rest[:2], (rest[0], shape[0] // rest[0])):
            self.grouped[node] = _Grouped(blob, rest[0])
        else:
            raise _refuse(f"a view of {shape} to {rest} is not in the IR")

    def transpose(self, node: fx.Node) -> None:
        dims = {_arg(node, 1, "dim0"), _arg(node, 2, "dim1")}
        grouped = self.grouped.get(node.args[0])
        if grouped is None or grouped.transposed or dims not in ({1, 2}, {1, -3}):
            raise _refuse("only the transpose of a channel shuffle's groups (dims 1 and 2) is in the IR")
        self.grouped[node] = _Grouped(grouped.blob, grouped.groups, transposed=True)

    def alias(self, node: fx.Node, arg: Any) -> None:
        if arg in self.grouped:
            self.grouped[node] = self.grouped[arg]
        else:
            self.value[node] = self.input_blob(arg)

    def mean(self, node: fx.Node) -> None:
        """``x.mean((2, 3))``: global average pooling."""
        blob = self.input_blob(node.args[0])
        dims = _arg(node, 1, "dim", None)
        dims = set(dims) if isinstance(dims, list | tuple) else set()
        if (len(self.shape[blob]) != 3 or _arg(node, 2, "keepdim", False) or dims not in ({2, 3}, {-2, -1})
                or len(node.args) > 3 or set(node.kwargs) - {"dim", "keepdim"}):
            raise _refuse("only the mean over height and width (dims 2 and 3, keepdim=False) is in the IR")
        self.layer(node, node.args[0], GlobalAvgPool())

    # building blocks --------------------------------------------------------------------------
    def only_args(self, node: fx.Node, count: int, allowed: set[str] = frozenset()) -> None:
        extra = set(node.kwargs) - set(allowed)
        if len(node.args) != count or extra:
            raise _refuse(f"call with arguments {node.args[count:]} {sorted(extra)} is not in the IR")

    def input_blob(self, arg: Any) -> str:
        if not isinstance(arg, fx.Node) or arg not in self.value:
            raise _refuse(f"input {arg!r} is not a tensor the IR computes")
        return self.value[arg]

    def name(self, stem: str) -> str:
        name = self.graph.fresh_name(stem)
        return self.graph.fresh_name(f"{stem}_") if name in _RESERVED else name

    def ceil_as_floor(self, node: fx.Node, spec: Pool2d) -> None:
        """A pool with ``ceil_mode=True`` is the IR's (floor) pool when every window fits: the sizes agree."""
        _, h, w = self.shape[self.input_blob(node.args[0])]
        k, s, p = spec.kernel_size, spec.stride, spec.padding
        if any((size + 2 * p - k) % s for size in (h, w)):
            raise _refuse(f"ceil_mode=True on a {h}x{w} input (a partial last window) is not in the IR")

    def layer(self, node: fx.Node, arg: Any, spec: Layer, src: str | None = None) -> str:
        src = src or self.input_blob(arg)
        name = self.name(node.name)
        dst = self.graph.add_blob(name)
        self.graph.add_layer(name, src, dst, spec)
        self.shape[dst] = tuple(spec.output_shape(self.shape[src]))
        self.value[node] = dst
        return name

    def merge(self, node: fx.Node, args: list[Any], merge: str) -> None:
        srcs = [self.input_blob(a) for a in args]
        dst = self.graph.add_blob(self.name(node.name), merge)
        for i, src in enumerate(srcs):
            self.graph.add_layer(self.name(f"{dst}_in{i}"), src, dst, Identity())
        edges = self.graph.in_edges(dst)
        self.shape[dst] = self.graph._merged(dst, edges, [self.shape[s] for s in srcs])
        self.value[node] = dst

    def add(self, node: fx.Node) -> None:
        alpha = node.kwargs.get("alpha", 1)
        if set(node.kwargs) - {"alpha"} or alpha != 1 or len(node.args) != 2:
            raise _refuse("only the plain sum of two tensors is in the IR")
        if not all(isinstance(a, fx.Node) for a in node.args):
            raise _refuse("adding a constant is not in the IR")
        self.merge(node, list(node.args), "add")

    def mul(self, node: fx.Node) -> None:
        if node.kwargs or len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
            raise _refuse("only the product of two tensors is in the IR")
        self.merge(node, list(node.args), "mul")

    def cat(self, node: fx.Node) -> None:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim not in (1, -3) or not isinstance(tensors, list | tuple):
            raise _refuse(f"concatenation along dim {dim} is not in the IR (channels only)")
        if any(len(self.shape[self.input_blob(t)]) != 3 for t in tensors):
            raise _refuse("concatenation of non-image tensors is not in the IR")
        self.merge(node, list(tensors), "concat")

    def flatten(self, node: fx.Node, arg: Any) -> None:
        src = self.input_blob(arg)
        if len(self.shape[src]) == 1:  # already flat in the IR (after a global average pool)
            self.value[node] = src
        else:
            self.layer(node, arg, Flatten())

    def adaptive(self, node: fx.Node, arg: Any, size: Any) -> None:
        """Global average pooling (to a vector when only flattened, else to a 1x1 map), an average
        pool that tiles evenly, or the identity."""
        src = self.input_blob(arg)
        c, h, w = self.shape[src]
        oh, ow = (size, size) if isinstance(size, int) else tuple(size)
        oh, ow = oh or h, ow or w
        if (oh, ow) == (1, 1) and all(self.flattens(user) for user in node.users):
            self.layer(node, arg, GlobalAvgPool())
        elif (oh, ow) == (h, w):
            self.value[node] = src
        elif h % oh == 0 and w % ow == 0 and h // oh == w // ow:
            k = h // oh
            self.layer(node, arg, Pool2d("avg", k, k, 0))
        elif oh == ow:
            self.layer(node, arg, AdaptiveAvgPool2d(oh))
        else:
            raise _refuse(f"adaptive pooling of {h}x{w} to {oh}x{ow} is not in the IR (square maps only)")

    def check_shape(self, node: fx.Node) -> None:
        if node in self.sizes or node in self.pieces:  # numbers, or the slices a later getitem takes
            return
        meta = node.meta.get("tensor_meta")
        if node in self.grouped and meta is not None:
            grouped = self.grouped[node]
            if tuple(meta.shape[1:]) != grouped.shape(self.shape[grouped.blob]):
                raise _refuse(f"it makes shape {tuple(meta.shape[1:])} where the IR makes "
                              f"{grouped.shape(self.shape[grouped.blob])}")
            return
        if node not in self.value or meta is None:
            raise _refuse("it does not compute one tensor")
        traced = tuple(meta.shape[1:])
        mine = self.shape[self.value[node]]
        if traced != mine and not (traced == (*mine, 1, 1) and len(mine) == 1):
            raise _refuse(f"it makes shape {traced} where the IR makes {mine}")


    def flattens(self, node: fx.Node) -> bool:
        """Whether ``node`` flattens dims 1 to -1 (so a global average pool may drop its 1x1 map)."""
        if node.op == "call_module":
            module = self.modules[node.target]
            return isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1
        args = node.args
        if node.target is torch.flatten or (node.op == "call_method" and node.target == "flatten"):
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
            return start == 1 and end == -1
        return False


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``index`` of a call (counting the tensor), given by position or as ``name``."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _fits(dims: tuple[Any, ...], shape: Shape) -> bool:
    """Whether view dims (at most one -1) give ``shape``."""
    if len(dims) != len(shape) or not all(isinstance(d, int) for d in dims) or sum(d == -1 for d in dims) > 1:
        return False
    known = math.prod(d for d in dims if d != -1)
    return all(d in (s, -1) for d, s in zip(dims, shape, strict=True)) and (-1 not in dims or known > 0)


def _stochastic_depth(target: Any) -> bool:
    """torchvision's ``stochastic_depth`` (traced as a function), recognised without importing torchvision."""
    return getattr(target, "__name__", "") == "stochastic_depth" and (
        getattr(target, "__module__", "") or "").startswith("torchvision.ops")


def _op(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """What a node does, for an error message: its module's repr, its function's or method's name."""
    if node.op == "call_module":
        module = modules.get(node.target)
        return type(module).__name__ if module is None else _module_repr(module)
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f".{node.target}()"
    return node.op


def _module_repr(module: nn.Module) -> str:
    text = " ".join(repr(module).split())
    return text if len(text) <= 80 else type(module).__name__


# --- entry point ---------------------------------------------------------------------------------

def from_torch(
    module: nn.Module,
    example_input: torch.Tensor | tuple[int, ...],
    *,
    probes: int = 3,
    seed: int = 0,
) -> Imported:
    """Trace ``module``, map it onto the IR with its weights, and check the two agree.

    ``example_input`` is a batch (N, C, H, W) or one input's shape (C, H, W). The result's graph
    computes the module's outputs in eval mode within 1e-10 relative (both in float64; see ``_check``)
    on the example and ``probes`` random batches; :class:`TorchImportError` (one line) names the
    first node the IR cannot express, or reports the error when the outputs disagree. Layers are
    named after the traced nodes:

    >>> from collections import OrderedDict
    >>> from torch import nn
    >>> from morphnas.ir import from_torch
    >>> net = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3, padding=1), bn=nn.BatchNorm2d(4),
    ...                                 relu=nn.ReLU(), flat=nn.Flatten(), fc=nn.Linear(4 * 6 * 6, 2)))
    >>> graph, weights, err = from_torch(net, (1, 6, 6))
    >>> [e.name for e in graph.edges()]
    ['conv', 'bn', 'relu', 'flat', 'fc']
    >>> err < 1e-10
    True
    """
    if not isinstance(module, nn.Module):
        raise TorchImportError(f"from_torch needs an nn.Module, got {type(module).__name__}")
    if isinstance(example_input, torch.Tensor):
        example = example_input.detach().float()
        if example.dim() < 2:
            raise TorchImportError(f"example_input must be a batch (N, C, H, W), got shape {tuple(example.shape)}")
    else:
        shape = tuple(example_input)
        if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
            raise TorchImportError(f"input shape must be positive sizes like (3, 224, 224), got {example_input!r}")
        example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed))
    input_shape = tuple(example.shape[1:])
    was_training = module.training
    module.eval()
    try:
        try:
            traced = fx.symbolic_trace(module)
        except Exception as err:  # noqa: BLE001 - fx raises many kinds on untraceable code
            line = " ".join(str(err).split())[:200]
            raise TorchImportError(f"cannot trace {type(module).__name__} with torch.fx: {line}") from None
        traced.graph.eliminate_dead_code()
        traced.recompile()
        with torch.no_grad():
            try:  # ShapeProp prints a traceback of its own on failure: keep it out of the user's terminal
                with contextlib.redirect_stderr(io.StringIO()):
                    ShapeProp(traced).propagate(example)
            except Exception as err:  # noqa: BLE001 - the user's module fails on this input
                cause = err.__cause__ or err  # ShapeProp wraps the module's own error
                line = " ".join(f"{type(cause).__name__}: {cause}".split())[:200]
                raise TorchImportError(f"{type(module).__name__} fails on an input of shape {tuple(example.shape)}: "
                                       f"{line}") from None
        importer = _Importer(traced, input_shape)
        importer.run()
        graph = importer.graph.validate()
        weights = importer.weights
        err, tolerance = _check(module, graph, weights, example, probes, seed)
    finally:
        module.train(was_training)
    if not err <= tolerance:
        raise TorchImportError(
            f"the imported graph does not compute {type(module).__name__}'s outputs: max relative error "
            f"{err:.3g} > {tolerance:.3g} (float64)"
        )
    return Imported(graph, weights, err, tolerance)


def _check(module: nn.Module, graph: ArchGraph, weights: Weights, example: torch.Tensor, probes: int,
           seed: int) -> tuple[float, float]:
    """The import's worst float64 error on the probes and the tolerance it must meet: 1e-10, or
    more where the module itself is ill-conditioned, ``CONDITIONING`` times its own float32 error
    (float64 against float32) scaled by the ratio of the two unit roundoffs."""
    reference = copy.deepcopy(module).double().eval()
    compiled = compile_graph(graph, weights).double().eval()
    gen = torch.Generator().manual_seed(seed)
    inputs = [example] + [torch.randn(2, *example.shape[1:], generator=gen) * (1 + i) for i in range(probes)]
    worst = own = 0.0
    with torch.no_grad():
        for x in inputs:
            want, got = reference(x.double()), compiled(x.double())
            if not isinstance(want, torch.Tensor) or want.shape != got.shape:
                return math.inf, TOLERANCE
            worst = max(worst, rel_err(got, want))
            own = max(own, rel_err(module(x).double(), want))
    return worst, max(TOLERANCE, CONDITIONING * ROUNDOFF_RATIO * own)


@dataclass(frozen=True)
class Built:
    """A module ready to import and what was changed to fit it (one line each, for the user)."""

    module: nn.Module
    notes: tuple[str, ...] = ()


def build_module(spec: str, *, channels: int | None = None, classes: int | None = None,
                 weights: str | os.PathLike | None = None, seed: int = 0) -> Built:
    """``torchvision:NAME`` (initialised with ``seed``, nothing downloaded) or ``MODULE:ATTR``, with
    ``weights`` (a state dict: safetensors, or a PyTorch file read with ``weights_only``) loaded.

    A torchvision network then fits ``channels`` input channels and ``classes`` outputs: grey
    input folds its first convolution's RGB weights into one channel (their sum), another class
    count gets a fresh head (seeded). A ``weights`` file gives the head its own class count first.
    ``MODULE:ATTR`` names an ``nn.Module`` or a zero-argument callable returning one (``ATTR`` may be
    dotted); the current directory is searched first, as ``python -m`` does; it is not adapted.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"the network must look like MODULE:ATTR or torchvision:NAME, got {spec!r}")
    if module_name != "torchvision":
        if classes is not None:
            raise ConfigError("--classes applies to torchvision models only")
        module = _user_module(spec, module_name, attr)
        if weights is not None:
            _load_state(module, weights, spec, resize_head=False)
        return Built(module)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = _torchvision(attr)
    if weights is not None:
        _load_state(module, weights, spec, resize_head=True)
    notes = []
    if channels is not None:
        notes += _fold_channels(module, channels, spec)
    if classes is not None:
        notes += _replace_head(module, classes, seed)
    return Built(module, tuple(notes))


def _user_module(spec: str, module_name: str, attr: str) -> nn.Module:
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


def _torchvision(name: str) -> nn.Module:
    try:
        from torchvision import models
    except ImportError:
        raise ConfigError("torchvision is not installed (pip install torchvision)") from None
    known = models.list_models(module=models)
    if name not in known:
        raise ConfigError(f"unknown torchvision classification model {name!r}; e.g. resnet18, vgg11, mobilenet_v2")
    return models.get_model(name, weights=None)


def _read_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from safetensors (by its suffix) or a PyTorch file (``torch.load`` with
    ``weights_only=True``: tensors and plain containers only, no code is run)."""
    try:
        if str(path).endswith(".safetensors"):
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise ConfigError(f"cannot read weights {str(path)!r}: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 - a corrupt file raises many kinds
        raise ConfigError(f"cannot read weights {str(path)!r}: not a safetensors or PyTorch state dict "
                          f"({_line(err)[:120]})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ConfigError(f"weights {str(path)!r} are not a state dict (names to tensors)")
    return state


def _load_state(module: nn.Module, path: str | os.PathLike, spec: str, *, resize_head: bool) -> None:
    state = _read_state(path)
    if resize_head:
        name, head = _head(module)
        trained = state.get(f"{name}.weight")
        if trained is not None and trained.shape[1:] == head.weight.shape[1:]:
            _replace(module, name, _resized(head, trained.shape[0]))
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} for {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    problems = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if keys]
    if problems:
        raise ConfigError(f"weights {str(path)!r} do not fit {spec}: " + "; ".join(problems))
    module.load_state_dict(state)


def _fold_channels(module: nn.Module, channels: int, spec: str) -> list[str]:
    """Grey input: the first convolution's RGB kernels summed into one channel (the usual practice)."""
    name, conv = next(((n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None or conv.in_channels == channels:
        return []
    if (conv.in_channels, channels, conv.groups) != (3, 1, 1):
        raise ConfigError(f"{spec} takes {conv.in_channels}-channel input: --input may have {conv.in_channels} "
                          "channels, or 1 (grey: its RGB kernels are summed)")
    grey = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        grey.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            grey.bias.copy_(conv.bias)
    _replace(module, name, grey)
    return [f"grey input: {name}'s RGB kernels summed into one channel"]


def _replace_head(module: nn.Module, classes: int, seed: int) -> list[str]:
    name, head = _head(module)
    outputs = head.weight.shape[0]
    if outputs == classes:
        return []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _replace(module, name, _resized(head, classes))
    return [f"{classes} classes: head {name} ({outputs} outputs) replaced by a fresh one (seed {seed})"]


def _head(module: nn.Module) -> tuple[str, nn.Linear | nn.Conv2d]:
    """The classifier: a torchvision network's last linear or convolution (squeezenet's is a 1x1 conv)."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]


def _resized(head: nn.Linear | nn.Conv2d, outputs: int) -> nn.Module:
    """A freshly initialised ``head`` with ``outputs`` outputs."""
    if isinstance(head, nn.Linear):
        return nn.Linear(head.in_features, outputs, bias=head.bias is not None)
    return nn.Conv2d(head.in_channels, outputs, head.kernel_size, head.stride, head.padding, head.dilation,
                     head.groups, head.bias is not None, head.padding_mode)


def _replace(module: nn.Module, name: str, layer: nn.Module) -> None:
    """Put ``layer`` where the submodule ``name`` was."""
    parent, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent), attr, layer)


def _line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:200]
