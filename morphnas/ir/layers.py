"""Layer specs: small frozen dataclasses that label the edges of an architecture graph.

A spec knows its JSON form, the shape it maps an input shape to (shapes exclude the batch
dimension), how to build the ``nn.Module`` that computes it, its multiply-accumulates, its
standalone source and its channel rules. Specs hold no weights: weights
live in a flat ``dict[str, Tensor]`` keyed ``"<edge name>.<param>"``.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from morphnas.errors import GraphError

Shape = tuple[int, ...]
LAYER_TYPES: dict[str, type[Layer]] = {}


def _positive(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise GraphError(f"{what} must be a positive integer, got {value!r}")


def _non_negative(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GraphError(f"{what} must be a non-negative integer, got {value!r}")


def _image(shape: Shape, layer: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise GraphError(f"{layer} needs a (C, H, W) input, got shape {shape}")
    return shape  # type: ignore[return-value]


def _pooled(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _float(value: float) -> str:
    return repr(float(value))


def _int_tuple(values: tuple[int, ...]) -> str:
    """A tuple of ints as source: ``tuple(range(a, b))`` when contiguous, else a literal wrapped at 100 columns."""
    if len(values) > 1 and tuple(values) == tuple(range(values[0], values[0] + len(values))):
        return f"tuple(range({values[0]}, {values[0] + len(values)}))"
    literal = repr(tuple(values))
    if len(literal) <= 60:
        return literal
    lines = textwrap.wrap(", ".join(map(str, values)) + ",", width=96)
    return "(\n" + "".join(f"            {line}\n" for line in lines) + "        )"


@dataclass(frozen=True)
class Layer(abc.ABC):
    """Base of all layer specs; subclasses set ``type`` and register themselves."""

    type: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.type:
            LAYER_TYPES[cls.type] = cls

    @abc.abstractmethod
    def output_shape(self, shape: Shape) -> Shape:
        """The blob shape this layer produces from an input of ``shape``; GraphError if it cannot."""

    @abc.abstractmethod
    def build(self) -> nn.Module | None:
        """The module computing this layer, or None for a layer emitted as a plain function."""

    def to_dict(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"type": self.type, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}

    def replace(self, **changes: Any) -> Layer:
        return dataclasses.replace(self, **changes)

    def macs(self, shape: Shape) -> int:
        """Multiply-accumulates of one input of ``shape``, biases not counted (0: only convs and linears count)."""
        return 0

    # Standalone source (morphnas/export/source.py): a layer is either a submodule, built in
    # ``__init__`` by ``source_module`` and called in ``forward``, or an inline expression.
    # Generated code sees ``torch``, ``nn`` and ``F`` (torch.nn.functional); a type stating
    # neither is not exported.
    def source_module(self) -> str | None:
        """The constructor of this layer's module in standalone source, or None for an inline layer."""
        return None

    def source_inline(self, value: str) -> str | None:
        """The expression computing this layer from the variable ``value``, or None for a submodule."""
        return None

    def source_helper(self) -> str:
        """Source of a helper class that ``source_module`` constructs, "" for none."""
        return ""

    # Channel rules: what the width morphs (widen, shrink) and the tied channel groups need to
    # know of a layer type; a new type states them here and nowhere else.
    def channel_role(self, shape: Shape) -> str:
        """How the layer treats the channels (dim 0) of an input of ``shape``: ``mix`` reads all
        input channels into each output channel, ``pass`` maps channel i to channel i,
        ``shortcut`` maps them by a channel map, ``flatten`` spreads each over features, and
        ``block`` (a type that says nothing) stops width changes."""
        return "block"

    def channel_params(self) -> dict[str, tuple[int | None, int | None]]:
        """Per parameter or buffer: (its axis that follows the output channels, its axis that
        follows the input channels), None where none does; a ``pass`` layer's output channels
        are its input channels."""
        return {}

    def channel_fill(self, param: str) -> float | None:
        """The value of ``param`` for a new channel that passes it through unchanged (a batch
        norm's 1 and 0); None: a new filter is random and a new bias zero."""
        return None

    def with_channels(self, n_in: int, n_out: int) -> Layer:
        """This layer for ``n_in`` input and ``n_out`` output channels (``pass``: ``n_out == n_in``)."""
        return self

    def channel_cost(self, shape: Shape) -> tuple[int, int]:
        """MorphNet's cost F(O_1:M) in this layer's channels, for an input of ``shape``: (MACs,
        parameters) per (input, output) channel pair of a ``mix`` layer, its bias aside; per
        channel of a ``pass`` layer. A batch norm's MACs fold into the convolution before it."""
        return (0, 0)


@dataclass(frozen=True)
class _ChannelWise(Layer):
    """A layer without channel parameters that maps channel i to channel i."""

    def channel_role(self, shape: Shape) -> str:
        return "pass"


def layer_from_dict(data: Any) -> Layer:
    """Parse one layer spec from its JSON form; any problem raises GraphError."""
    if not isinstance(data, dict):
        raise GraphError(f"a layer must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in LAYER_TYPES:
        raise GraphError(f"unknown layer type {kind!r}; known: {', '.join(sorted(LAYER_TYPES))}")
    cls = LAYER_TYPES[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names - {"type"}
    if unknown:
        raise GraphError(f"layer type {kind!r} has no field(s) {', '.join(sorted(unknown))}")
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "type"}
    try:
        return cls(**args)
    except TypeError as err:
        raise GraphError(f"layer type {kind!r}: {err}") from None


@dataclass(frozen=True)
class Conv2d(Layer):
    type: ClassVar[str] = "conv2d"
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = True
    dilation: int = 1  # the spacing of the kernel's taps: it spans dilation * (kernel_size - 1) + 1 pixels

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "groups", "dilation"):
            _positive(getattr(self, name), f"conv2d {name}")
        _non_negative(self.padding, "conv2d padding")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise GraphError(f"conv2d groups={self.groups} must divide both channel counts")
        if not isinstance(self.bias, bool):
            raise GraphError(f"conv2d bias must be true or false, got {self.bias!r}")

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = _image(shape, "conv2d")
        if c != self.in_channels:
            raise GraphError(f"conv2d expects {self.in_channels} input channels, got {c}")
        k, s, p = self.span, self.stride, self.padding
        oh, ow = _pooled(h, k, s, p), _pooled(w, k, s, p)
        if oh <= 0 or ow <= 0:
            dilated = f" at dilation {self.dilation}" if self.dilation > 1 else ""
            raise GraphError(f"conv2d kernel {self.kernel_size}{dilated} does not fit a {h}x{w} input")
        return (self.out_channels, oh, ow)

    def build(self) -> nn.Module:
        return nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size,
            stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups, bias=self.bias,
        )

    def macs(self, shape: Shape) -> int:
        """Every output value: in_channels / groups x k x k products (dilation spaces the taps, adds none)."""
        return math.prod(self.output_shape(shape)) * (self.in_channels // self.groups) * self.kernel_size**2

    def source_module(self) -> str:
        dilation = f"dilation={self.dilation}, " if self.dilation > 1 else ""
        return (
            f"nn.Conv2d({self.in_channels}, {self.out_channels}, {self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, {dilation}groups={self.groups}, bias={self.bias})"
        )

    @property
    def span(self) -> int:
        """The pixels the kernel spans along each axis: ``kernel_size`` spaced ``dilation`` apart."""
        return self.dilation * (self.kernel_size - 1) + 1

    @property
    def depthwise(self) -> bool:
        return self.groups == self.in_channels == self.out_channels

    def channel_role(self, shape: Shape) -> str:
        """Mixing; depthwise passes channel i to channel i; other grouped convolutions block."""
        return "mix" if self.groups == 1 else "pass" if self.depthwise else "block"

    def channel_params(self) -> dict[str, tuple[int | None, int | None]]:
        return {"weight": (0, 1), "bias": (0, None)} if self.groups == 1 else {"weight": (0, None), "bias": (0, None)}

    def with_channels(self, n_in: int, n_out: int) -> Layer:
        if self.groups == 1:
            return self.replace(in_channels=n_in, out_channels=n_out)
        return self.replace(in_channels=n_in, out_channels=n_in, groups=n_in)

    def channel_cost(self, shape: Shape) -> tuple[int, int]:
        k2 = self.kernel_size**2
        spatial = math.prod(self.output_shape(shape)[1:])
        if self.groups == 1:
            return (k2 * spatial, k2)
        return (k2 * spatial, k2 + self.bias) if self.depthwise else (0, 0)  # depthwise: one filter per channel


_BN_FILL = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}  # a new channel passes through


@dataclass(frozen=True)
class BatchNorm2d(Layer):
    """Batch norm over the channels of a (C, H, W) blob."""

    type: ClassVar[str] = "batchnorm2d"
    module: ClassVar[type[nn.Module]] = nn.BatchNorm2d
    num_features: int
    eps: float = 1e-5
    momentum: float = 0.1

    def __post_init__(self) -> None:
        _positive(self.num_features, f"{self.type} num_features")
        if isinstance(self.eps, bool) or not isinstance(self.eps, int | float) or self.eps <= 0:
            raise GraphError(f"{self.type} eps must be positive, got {self.eps!r}")

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 3 or shape[0] != self.num_features:
            raise GraphError(f"{self.type} expects a ({self.num_features}, H, W) input, got shape {shape}")
        return shape

    def build(self) -> nn.Module:
        return self.module(self.num_features, self.eps, self.momentum)

    def source_module(self) -> str:
        cls = self.module.__name__
        return f"nn.{cls}({self.num_features}, eps={_float(self.eps)}, momentum={_float(self.momentum)})"

    def channel_role(self, shape: Shape) -> str:
        return "pass"

    def channel_params(self) -> dict[str, tuple[int | None, int | None]]:
        return {name: (0, None) for name in _BN_FILL}

    def channel_fill(self, param: str) -> float | None:
        return _BN_FILL[param]

    def with_channels(self, n_in: int, n_out: int) -> Layer:
        return self.replace(num_features=n_in)

    def channel_cost(self, shape: Shape) -> tuple[int, int]:
        return (0, 2)  # gamma and beta


@dataclass(frozen=True)
class BatchNorm1d(BatchNorm2d):
    """Batch norm over the features of a (F,) blob (MLPs)."""

    type: ClassVar[str] = "batchnorm1d"
    module: ClassVar[type[nn.Module]] = nn.BatchNorm1d

    def output_shape(self, shape: Shape) -> Shape:
        if shape != (self.num_features,):
            raise GraphError(f"{self.type} expects a ({self.num_features},) input, got shape {shape}")
        return shape


@dataclass(frozen=True)
class ActivationFunction:
    """An activation kind: the function computing it, and that function named in standalone source."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    source: str  # ``torch.X`` or ``F.X`` (torch.nn.functional)


ACTIVATIONS: dict[str, ActivationFunction] = {
    "relu": ActivationFunction(torch.relu, "torch.relu"),
    "tanh": ActivationFunction(torch.tanh, "torch.tanh"),
    "sigmoid": ActivationFunction(torch.sigmoid, "torch.sigmoid"),
    "gelu": ActivationFunction(nn.functional.gelu, "F.gelu"),
    "elu": ActivationFunction(nn.functional.elu, "F.elu"),
    "relu6": ActivationFunction(nn.functional.relu6, "F.relu6"),  # MobileNetV2
    "silu": ActivationFunction(nn.functional.silu, "F.silu"),  # EfficientNet
    "hardswish": ActivationFunction(nn.functional.hardswish, "F.hardswish"),  # MobileNetV3
    "hardsigmoid": ActivationFunction(nn.functional.hardsigmoid, "F.hardsigmoid"),
}


def _known_activation(kind: str) -> None:
    if kind not in ACTIVATIONS:
        raise GraphError(f"unknown activation {kind!r}; known: {', '.join(ACTIVATIONS)}")


@dataclass(frozen=True)
class Activation(_ChannelWise):
    type: ClassVar[str] = "activation"
    kind: str = "relu"

    def __post_init__(self) -> None:
        _known_activation(self.kind)

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def build(self) -> nn.Module:
        return _FunctionModule(ACTIVATIONS[self.kind].fn)

    def source_inline(self, value: str) -> str:
        return f"{ACTIVATIONS[self.kind].source}({value})"


class _FunctionModule(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class ParametricActivationModule(nn.Module):
    """Eq. 8 of the 2017 paper: ``(1 - a) * phi(x) + a * x`` with a learnable ``a``."""

    def __init__(self, kind: str, num_parameters: int) -> None:
        super().__init__()
        self.phi = ACTIVATIONS[kind].fn
        self.weight = nn.Parameter(torch.ones(num_parameters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.weight.view(-1, *([1] * (x.dim() - 2))) if self.weight.numel() > 1 else self.weight
        return (1 - a) * self.phi(x) + a * x


_PACT_SOURCE = '''
class ParametricActivation(nn.Module):
    """Eq. 8 of Wei et al. (2017): ``(1 - a) * phi(x) + a * x`` with a learnable slope ``a``."""

    def __init__(self, phi, num_parameters: int = 1) -> None:
        super().__init__()
        self.phi = phi
        self.weight = nn.Parameter(torch.ones(num_parameters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.weight.view(-1, *([1] * (x.dim() - 2))) if self.weight.numel() > 1 else self.weight
        return (1 - a) * self.phi(x) + a * x
'''  # ParametricActivationModule taking phi itself, for standalone source


@dataclass(frozen=True)
class ParametricActivation(Layer):
    """Eq. 8: ``(1 - a) * phi + a * id``; a new one starts at ``a = 1`` (the identity).

    For ``phi = relu`` this is exactly ``nn.PReLU`` with slope ``a``, which is what it builds.
    """

    type: ClassVar[str] = "pact"
    kind: str = "relu"
    num_parameters: int = 1

    def __post_init__(self) -> None:
        _known_activation(self.kind)
        _positive(self.num_parameters, "pact num_parameters")

    def output_shape(self, shape: Shape) -> Shape:
        if self.num_parameters > 1 and shape[0] != self.num_parameters:
            raise GraphError(f"pact has {self.num_parameters} slopes for {shape[0]} channels")
        return shape

    def build(self) -> nn.Module:
        if self.kind == "relu":
            return nn.PReLU(self.num_parameters, init=1.0)
        return ParametricActivationModule(self.kind, self.num_parameters)

    def source_module(self) -> str:
        if self.kind == "relu":  # eq. 8 with phi = relu is PReLU with slope a
            return f"nn.PReLU({self.num_parameters}, init=1.0)"
        return f"ParametricActivation({ACTIVATIONS[self.kind].source}, {self.num_parameters})"

    def source_helper(self) -> str:
        return "" if self.kind == "relu" else _PACT_SOURCE

    def channel_role(self, shape: Shape) -> str:
        return "pass"

    def channel_params(self) -> dict[str, tuple[int | None, int | None]]:
        return {"weight": (0, None)} if self.num_parameters > 1 else {}

    def channel_fill(self, param: str) -> float | None:
        return 1.0  # a = 1: the identity (eq. 8)

    def with_channels(self, n_in: int, n_out: int) -> Layer:
        return self.replace(num_parameters=n_in) if self.num_parameters > 1 else self

    def channel_cost(self, shape: Shape) -> tuple[int, int]:
        return (0, 1 if self.num_parameters > 1 else 0)


@dataclass(frozen=True)
class Identity(_ChannelWise):
    """The identity times a constant ``scale`` (the paper's scaled identity shortcut)."""

    type: ClassVar[str] = "identity"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float) or not math.isfinite(
            self.scale
        ):
            raise GraphError(f"identity scale must be a finite number, got {self.scale!r}")

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def build(self) -> None:
        return None  # emitted as ``x`` or ``x * scale`` in the compiled forward

    def source_inline(self, value: str) -> str:
        return value if self.scale == 1.0 else f"{value} * {_float(self.scale)}"


class ShortcutAModule(nn.Module):
    """Subsample by ``stride`` and place input channel ``i`` at output channel ``channel_map[i]``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, channel_map: tuple[int, ...]):
        super().__init__()
        self.stride = stride
        source = [in_channels] * out_channels  # index in_channels is an all-zero channel
        for i, j in enumerate(channel_map):
            source[j] = i
        self.register_buffer("source", torch.tensor(source, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        padded = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
        return padded.index_select(1, self.source)


@dataclass(frozen=True)
class ShortcutA(Layer):
    """He et al.'s parameter-free "option A" shortcut as an explicit channel map.

    Input channel ``i`` lands on output channel ``channel_map[i]``; other outputs are zero.
    """

    type: ClassVar[str] = "shortcut_a"
    in_channels: int
    out_channels: int
    stride: int
    channel_map: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "stride"):
            _positive(getattr(self, name), f"shortcut_a {name}")
        cmap = self.channel_map
        if (
            not isinstance(cmap, tuple)
            or len(cmap) != self.in_channels
            or len(set(cmap)) != len(cmap)
            or any(isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < self.out_channels for j in cmap)
        ):
            raise GraphError(
                f"shortcut_a channel_map must map {self.in_channels} inputs to distinct outputs "
                f"in [0, {self.out_channels})"
            )

    @staticmethod
    def centred(in_channels: int, out_channels: int, stride: int) -> ShortcutA:
        """He et al.'s layout: zero channels padded evenly on both sides."""
        offset = (out_channels - in_channels) // 2
        return ShortcutA(in_channels, out_channels, stride, tuple(range(offset, offset + in_channels)))

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = _image(shape, "shortcut_a")
        if c != self.in_channels:
            raise GraphError(f"shortcut_a expects {self.in_channels} input channels, got {c}")
        return (self.out_channels, -(-h // self.stride), -(-w // self.stride))

    def build(self) -> nn.Module:
        return ShortcutAModule(self.in_channels, self.out_channels, self.stride, self.channel_map)

    def source_module(self) -> str:
        cmap = _int_tuple(self.channel_map)
        return f"ShortcutAModule({self.in_channels}, {self.out_channels}, {self.stride}, {cmap})"

    def source_helper(self) -> str:
        return inspect.getsource(ShortcutAModule)  # the compiled graph's own module, verbatim

    def channel_role(self, shape: Shape) -> str:
        return "shortcut"


@dataclass(frozen=True)
class ChannelShuffle(Layer):
    """ShuffleNet's channel shuffle (Zhang et al. 2018): ``groups`` groups of ``C / groups``
    channels, read as a (groups, C / groups) matrix and written transposed, so output channel
    ``c * groups + g`` is input channel ``g * C / groups + c`` (``nn.ChannelShuffle``).

    A permutation that depends on the width: widening or shrinking its input would move every
    channel after the first group, so it states no channel rules and width changes stop at it
    (its blobs are no widen or shrink site); the other morphs see a layer like any.
    """

    type: ClassVar[str] = "channel_shuffle"
    groups: int

    def __post_init__(self) -> None:
        _positive(self.groups, "channel_shuffle groups")

    def output_shape(self, shape: Shape) -> Shape:
        c, _, _ = _image(shape, "channel_shuffle")
        if c % self.groups:
            raise GraphError(f"channel_shuffle groups={self.groups} must divide the {c} input channels")
        return shape

    def build(self) -> nn.Module:
        return nn.ChannelShuffle(self.groups)

    def source_module(self) -> str:
        return f"nn.ChannelShuffle({self.groups})"


class ChannelSliceModule(nn.Module):
    """Channels ``start`` to ``stop - 1`` of a batch."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start:self.stop]

    def extra_repr(self) -> str:
        return f"start={self.start}, stop={self.stop}"


@dataclass(frozen=True)
class ChannelSlice(Layer):
    """Channels ``start`` to ``stop - 1`` of its input (``torch.chunk`` and ``torch.split`` along
    the channels are one slice per piece).

    Where it reads depends on the width before it, so it states no channel rules: width changes
    stop at it.
    """

    type: ClassVar[str] = "channel_slice"
    start: int
    stop: int

    def __post_init__(self) -> None:
        _non_negative(self.start, "channel_slice start")
        _positive(self.stop, "channel_slice stop")
        if self.stop <= self.start:
            raise GraphError(f"channel_slice stop {self.stop} must be above start {self.start}")

    def output_shape(self, shape: Shape) -> Shape:
        if not shape or shape[0] < self.stop:
            raise GraphError(f"channel_slice {self.start}:{self.stop} needs at least {self.stop} channels, "
                             f"got shape {shape}")
        return (self.stop - self.start, *shape[1:])

    def build(self) -> nn.Module:
        return ChannelSliceModule(self.start, self.stop)

    def source_inline(self, value: str) -> str:
        return f"{value}[:, {self.start}:{self.stop}]"


@dataclass(frozen=True)
class Pool2d(_ChannelWise):
    type: ClassVar[str] = "pool2d"
    mode: str = "max"
    kernel_size: int = 2
    stride: int = 2
    padding: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("max", "avg"):
            raise GraphError(f"pool2d mode must be 'max' or 'avg', got {self.mode!r}")
        _positive(self.kernel_size, "pool2d kernel_size")
        _positive(self.stride, "pool2d stride")
        _non_negative(self.padding, "pool2d padding")

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = _image(shape, "pool2d")
        oh, ow = (_pooled(s, self.kernel_size, self.stride, self.padding) for s in (h, w))
        if oh <= 0 or ow <= 0:
            raise GraphError(f"pool2d kernel {self.kernel_size} does not fit a {h}x{w} input")
        return (c, oh, ow)

    def build(self) -> nn.Module:
        cls = nn.MaxPool2d if self.mode == "max" else nn.AvgPool2d
        return cls(self.kernel_size, self.stride, self.padding)

    def source_inline(self, value: str) -> str:
        fn = "F.max_pool2d" if self.mode == "max" else "F.avg_pool2d"
        return f"{fn}({value}, {self.kernel_size}, {self.stride}, {self.padding})"


@dataclass(frozen=True)
class AdaptiveAvgPool2d(_ChannelWise):
    """Average pooling to a ``size`` x ``size`` map whatever the input's (``nn.AdaptiveAvgPool2d``):
    output cell i averages input rows ``floor(i H / size)`` to ``ceil((i + 1) H / size) - 1``, and
    so repeats input pixels when the map grows (VGG's 7x7 pool on a small image)."""

    type: ClassVar[str] = "adaptive_avg_pool2d"
    size: int

    def __post_init__(self) -> None:
        _positive(self.size, "adaptive_avg_pool2d size")

    def output_shape(self, shape: Shape) -> Shape:
        return (_image(shape, "adaptive_avg_pool2d")[0], self.size, self.size)

    def build(self) -> nn.Module:
        return nn.AdaptiveAvgPool2d(self.size)

    def source_inline(self, value: str) -> str:
        return f"F.adaptive_avg_pool2d({value}, {self.size})"


@dataclass(frozen=True)
class GlobalAvgPool(_ChannelWise):
    """Mean over height and width: (C, H, W) -> (C,)."""

    type: ClassVar[str] = "global_avg_pool"

    def output_shape(self, shape: Shape) -> Shape:
        return (_image(shape, "global_avg_pool")[0],)

    def build(self) -> nn.Module:
        return _FunctionModule(_global_avg_pool)

    def source_inline(self, value: str) -> str:
        return f"{value}.mean(dim=(2, 3))"


def _global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))


@dataclass(frozen=True)
class Flatten(Layer):
    type: ClassVar[str] = "flatten"

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def build(self) -> nn.Module:
        return nn.Flatten()

    def source_inline(self, value: str) -> str:
        return f"torch.flatten({value}, 1)"

    def channel_role(self, shape: Shape) -> str:
        return "pass" if len(shape) == 1 else "flatten"


@dataclass(frozen=True)
class Linear(Layer):
    type: ClassVar[str] = "linear"
    in_features: int
    out_features: int
    bias: bool = True

    def __post_init__(self) -> None:
        _positive(self.in_features, "linear in_features")
        _positive(self.out_features, "linear out_features")

    def output_shape(self, shape: Shape) -> Shape:
        if shape != (self.in_features,):
            raise GraphError(f"linear expects a ({self.in_features},) input, got shape {shape}")
        return (self.out_features,)

    def build(self) -> nn.Module:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias)

    def macs(self, shape: Shape) -> int:
        return self.in_features * self.out_features

    def source_module(self) -> str:
        return f"nn.Linear({self.in_features}, {self.out_features}, bias={self.bias})"

    def channel_role(self, shape: Shape) -> str:
        return "mix"

    def channel_params(self) -> dict[str, tuple[int | None, int | None]]:
        return {"weight": (0, 1), "bias": (0, None)}

    def with_channels(self, n_in: int, n_out: int) -> Layer:
        return self.replace(in_features=n_in, out_features=n_out)

    def channel_cost(self, shape: Shape) -> tuple[int, int]:
        return (1, 1)


@dataclass(frozen=True)
class Dropout(_ChannelWise):
    type: ClassVar[str] = "dropout"
    p: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.p, bool) or not isinstance(self.p, int | float) or not 0 <= self.p < 1:
            raise GraphError(f"dropout p must be in [0, 1), got {self.p!r}")

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def build(self) -> nn.Module:
        return nn.Dropout(self.p)

    def source_module(self) -> str:
        return f"nn.Dropout({_float(self.p)})"
