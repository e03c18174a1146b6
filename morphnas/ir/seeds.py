"""Seed networks: He et al.'s CIFAR ResNets, a plain CNN and an MLP, as architecture graphs."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

from morphnas.errors import ConfigError, GraphError
from morphnas.ir.graph import ArchGraph
from morphnas.ir.layers import (
    Activation,
    BatchNorm2d,
    Conv2d,
    Flatten,
    GlobalAvgPool,
    Identity,
    Layer,
    Linear,
    Pool2d,
    ShortcutA,
)

RESNET_DEPTHS = (20, 32, 44, 56, 110)


class _Chain:
    """Appends layers one after another; each new blob is named after the layer producing it."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        self.graph = ArchGraph(input_shape)
        self.head = self.graph.add_blob("input")

    def add(self, name: str, layer: Layer, src: str | None = None, dst: str | None = None) -> str:
        dst = dst or self.graph.add_blob(name)
        self.graph.add_layer(name, src or self.head, dst, layer)
        self.head = dst
        return dst

    def conv_bn(self, prefix: str, cin: int, cout: int, kernel: int, stride: int, src: str | None = None) -> str:
        self.add(f"{prefix}_conv", Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), src)
        return self.add(f"{prefix}_bn", BatchNorm2d(cout))


def resnet(
    depth: int,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
    shortcut: str = "A",
    width: int = 16,
) -> ArchGraph:
    """He et al. (2015) CIFAR ResNet of ``depth`` = 6n + 2: three stages of n basic blocks.

    ``shortcut="A"``: parameter-free shortcuts (subsample, zero channels) where the shape changes;
    ``"B"``: 1x1 projection convolution + BN there (as the 2017 paper's Caffe models).
    """
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
    if shortcut not in ("A", "B"):
        raise ConfigError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
    n = (depth - 2) // 6
    chain = _Chain(input_shape)
    chain.conv_bn("stem", input_shape[0], width, 3, 1)
    chain.add("stem_relu", Activation("relu"))
    cin = width
    for stage in range(3):
        cout = width * 2**stage
        for block in range(n):
            p = f"s{stage + 1}b{block}"
            stride = 2 if stage > 0 and block == 0 else 1
            x = chain.head
            chain.conv_bn(f"{p}_1", cin, cout, 3, stride)
            chain.add(f"{p}_relu1", Activation("relu"))
            chain.conv_bn(f"{p}_2", cout, cout, 3, 1)
            total = chain.graph.add_blob(f"{p}_sum")
            chain.graph.add_layer(f"{p}_residual", chain.head, total, Identity())
            if cin == cout and stride == 1:
                chain.graph.add_layer(f"{p}_shortcut", x, total, Identity())
            elif shortcut == "A":
                chain.graph.add_layer(f"{p}_shortcut", x, total, ShortcutA.centred(cin, cout, stride))
            else:
                chain.conv_bn(f"{p}_proj", cin, cout, 1, stride, src=x)
                chain.graph.add_layer(f"{p}_shortcut", chain.head, total, Identity())
            chain.add(f"{p}_relu", Activation("relu"), src=total)
            cin = cout
    chain.add("pool", GlobalAvgPool())
    chain.add("fc", Linear(cin, num_classes))
    return chain.graph.validate()


def cnn(input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> ArchGraph:
    """Three stages of conv3x3-BN-ReLU (16, 32, 64 channels), 2x2 max pooling between them."""
    chain = _Chain(input_shape)
    cin = input_shape[0]
    for stage, cout in enumerate((16, 32, 64), start=1):
        if stage > 1:
            chain.add(f"pool{stage - 1}", Pool2d("max", 2, 2))
        chain.conv_bn(f"c{stage}", cin, cout, 3, 1)
        chain.add(f"c{stage}_relu", Activation("relu"))
        cin = cout
    chain.add("pool", GlobalAvgPool())
    chain.add("fc", Linear(cin, num_classes))
    return chain.graph.validate()


def mlp(input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10, hidden: int = 256) -> ArchGraph:
    """Flatten, two hidden layers of ``hidden`` units with ReLU, a linear classifier."""
    chain = _Chain(input_shape)
    chain.add("flatten", Flatten())
    features = 1
    for d in input_shape:
        features *= d
    for i in (1, 2):
        chain.add(f"fc{i}", Linear(features, hidden))
        chain.add(f"fc{i}_relu", Activation("relu"))
        features = hidden
    chain.add("fc", Linear(features, num_classes))
    return chain.graph.validate()


SEEDS: dict[str, Callable[..., ArchGraph]] = {
    **{f"resnet{d}": partial(resnet, d) for d in RESNET_DEPTHS},
    "cnn": cnn,
    "mlp": mlp,
}


def build_seed(name: str, input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10, **options) -> ArchGraph:
    """A seed by name; ``resnet<depth>`` takes any depth 6n + 2 (e.g. ``resnet8`` for quick searches)."""
    match = re.fullmatch(r"resnet(\d+)", name)
    if match:
        return resnet(int(match.group(1)), tuple(input_shape), num_classes, **options)
    if name not in SEEDS:
        raise ConfigError(f"unknown network {name!r}; seeds: {', '.join(SEEDS)} (or a .json file)")
    return SEEDS[name](tuple(input_shape), num_classes, **options)


def load_arch(
    name_or_path: str | Path,
    input_shape: tuple[int, ...] = (3, 32, 32),
    num_classes: int = 10,
    **options,
) -> ArchGraph:
    """A seed by name, or an architecture JSON file (whose own input shape then applies)."""
    text = str(name_or_path)
    if text in SEEDS or re.fullmatch(r"resnet\d+", text):
        return build_seed(text, input_shape, num_classes, **options)
    path = Path(text)
    if path.suffix == ".json" or path.exists():
        try:
            return ArchGraph.loads(path.read_text())
        except OSError as err:
            raise ConfigError(f"cannot read architecture {text!r}: {err.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"cannot read architecture {text!r}: not a UTF-8 text file") from None
        except GraphError as err:
            raise GraphError(f"{text}: {err}") from None
    return build_seed(text, input_shape, num_classes, **options)


def check_fits(graph: ArchGraph, input_shape: tuple[int, ...], num_classes: int, dataset: str) -> None:
    """ConfigError unless ``graph`` takes the inputs of ``dataset`` and gives one output per class."""
    if tuple(graph.input_shape) != tuple(input_shape):
        raise ConfigError(f"the network takes {_shape(graph.input_shape)} inputs but {dataset} has "
                          f"{_shape(input_shape)}")
    outputs = graph.shapes()[graph.sink]
    if tuple(outputs) != (num_classes,):
        raise ConfigError(f"the network has {_shape(outputs)} outputs but {dataset} has {num_classes} classes")


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def arch_to_file(graph: ArchGraph, path: str | Path) -> None:
    Path(path).write_text(json.dumps(graph.to_json(), indent=1) + "\n")
