"""Independent hand-written PyTorch versions of the seed networks, to check the compiler against,
and the weights every exactness test probes: calibrated as a trained network's, checked to be
sensitive to the input."""

import torch
import torch.nn.functional as F
from torch import nn

from morphnas.ir import ArchGraph, Weights, compile_graph, init_weights
from morphnas.morph import SENSITIVITY_FLOOR, sensitivity, trained_like
from morphnas.morph import calibrate_bn as morph_calibrate_bn


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, (cout - cin) // 2
        self.project = None
        if shortcut == "B" and (stride != 1 or cin != cout):
            self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.project is not None:
            short = self.project(x)
        elif self.stride != 1 or self.pad:
            short = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))
        else:
            short = x
        return F.relu(out + short)


class ResNet(nn.Module):
    def __init__(self, depth: int, cin: int, classes: int, shortcut: str = "A") -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(cin, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, c = [], 16
        for stage in range(3):
            cout = 16 * 2**stage
            for b in range(n):
                blocks.append(Block(c, cout, 2 if stage and not b else 1, shortcut))
                c = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


def resnet_key_map(depth: int, shortcut: str = "A") -> dict[str, str]:
    """Our edge names -> the reference module's parameter prefixes."""
    n = (depth - 2) // 6
    keys = {"stem_conv": "conv", "stem_bn": "bn", "fc": "fc"}
    i = 0
    for stage in range(3):
        for b in range(n):
            p = f"s{stage + 1}b{b}"
            keys.update({f"{p}_1_conv": f"blocks.{i}.conv1", f"{p}_1_bn": f"blocks.{i}.bn1",
                         f"{p}_2_conv": f"blocks.{i}.conv2", f"{p}_2_bn": f"blocks.{i}.bn2",
                         f"{p}_proj_conv": f"blocks.{i}.project.0", f"{p}_proj_bn": f"blocks.{i}.project.1"})
            i += 1
    return keys


class CNN(nn.Module):
    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(a, b, 3, 1, 1, bias=False) for a, b in ((cin, 16), (16, 32), (32, 64))])
        self.bns = nn.ModuleList([nn.BatchNorm2d(c) for c in (16, 32, 64)])
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            if i:
                x = F.max_pool2d(x, 2)
            x = F.relu(bn(conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


CNN_KEYS = {"c1_conv": "convs.0", "c2_conv": "convs.1", "c3_conv": "convs.2",
            "c1_bn": "bns.0", "c2_bn": "bns.1", "c3_bn": "bns.2", "fc": "fc"}


class MLP(nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.l1, self.l2, self.out = nn.Linear(features, 256), nn.Linear(256, 256), nn.Linear(256, classes)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.out(F.relu(self.l2(F.relu(self.l1(x)))))


MLP_KEYS = {"fc1": "l1", "fc2": "l2", "fc": "out"}


def translate(weights: dict, key_map: dict[str, str]) -> dict:
    out = {}
    for key, value in weights.items():
        edge, _, param = key.partition(".")
        out[f"{key_map[edge]}.{param}"] = value
    return out


def calibrate_bn(net: nn.Module, shape: tuple[int, ...], seed: int = 0, batch: int = 16) -> nn.Module:
    """``net`` in eval mode with the batch-norm statistics of one train-mode pass over a random batch
    (:func:`morphnas.morph.calibrate_bn`), not the 0 and 1 of a fresh one nor random ones."""
    return morph_calibrate_bn(net, torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed)))


def assert_sensitive(model, shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0) -> float:
    """Assert that ``model``'s outputs depend on its input (relative change > SENSITIVITY_FLOOR
    between two random batches), so that an exactness check on it can fail: a network whose
    output is all but constant agrees with any wrong morph of itself. Returns the change."""
    change = sensitivity(model, shape, dtype, seed)
    assert change > SENSITIVITY_FLOOR, f"the outputs barely depend on the input (relative change {change:.2g})"
    return change


def trained_weights(graph: ArchGraph, seed: int = 1) -> Weights:
    """``init_weights(graph, seed)`` made a trained network's (:func:`morphnas.morph.trained_like`:
    random batch-norm affine terms and biases, statistics from a train-mode pass over a random
    batch), asserted to be sensitive to the input: an exactness check on them can fail."""
    batch = torch.randn(16, *graph.input_shape, generator=torch.Generator().manual_seed(seed))
    weights = trained_like(graph, init_weights(graph, seed), batch, seed)
    assert_sensitive(compile_graph(graph, weights).eval(), graph.input_shape)
    return weights
