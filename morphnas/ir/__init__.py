"""The architecture graph: blobs and layers, shapes, JSON, compilation to torch, cost."""

from morphnas.ir.compile import Weights, compile_graph, init_weights, load_weights
from morphnas.ir.graph import ArchGraph, Chain, Edge
from morphnas.ir.importer import Imported, from_torch
from morphnas.ir.layers import (
    LAYER_TYPES,
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
    ParametricActivation,
    Pool2d,
    ShortcutA,
    layer_from_dict,
)
from morphnas.ir.metrics import cost, count_macs, count_params, size_mb
from morphnas.ir.seeds import RESNET_DEPTHS, SEEDS, arch_to_file, build_seed, check_fits, cnn, load_arch, mlp, resnet

__all__ = [
    "LAYER_TYPES", "RESNET_DEPTHS", "SEEDS", "Activation", "AdaptiveAvgPool2d", "ArchGraph", "BatchNorm1d",
    "BatchNorm2d", "Chain", "ChannelShuffle", "ChannelSlice", "Conv2d", "Dropout", "Edge", "Flatten", "GlobalAvgPool",
    "Identity", "Imported", "Layer", "Linear",
    "ParametricActivation", "Pool2d", "ShortcutA", "Weights", "arch_to_file", "build_seed", "cnn",
    "check_fits", "compile_graph", "cost", "count_macs", "count_params", "from_torch", "init_weights",
    "layer_from_dict", "load_arch",
    "load_weights", "mlp", "resnet", "size_mb",
]
