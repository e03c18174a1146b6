"""The function-preservation verifier.

Runs parent and child on the same random inputs (whole images, so every border pixel counts)
and reports ``max_rel_err = max |child - parent| / max |parent|`` over the output. Exact morphs
must stay below 1e-5 in float32 and 1e-10 in float64 in eval mode, or below ``CONDITIONING``
times the parent's own rounding noise where that is larger, up to ``NOISE_CAP`` (an
ill-conditioned network, whose outputs no implementation reproduces more closely; the cap keeps
any wrong weight, which moves a network's outputs by 1e-3 or more, detectable:
docs/design.md#exactness). The train-mode
error (batch statistics in batch norms; dropout stays off, since its masks are random and a
widened layer's mask differs in shape) is reported beside it: a new batch norm calibrated on
real activations keeps it small, one with statistics 0 and 1 does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from morphnas.ir import ArchGraph, Weights, compile_graph
from morphnas.ir.compile import rel_err

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
CONDITIONING = 10.0  # headroom of a morph's error over the parent's own rounding noise
NOISE_CAP = 1e-6  # the most rounding noise can raise a tolerance to (it never raises float32's)


@dataclass(frozen=True)
class Verification:
    max_rel_err: float  # eval mode
    train_max_rel_err: float  # train mode (batch statistics)
    dtype: str
    noise: float = 0.0  # the parent's own rounding noise (:func:`_noise`), eval mode

    @property
    def tolerance(self) -> float:
        """The dtype's fixed tolerance, or ``CONDITIONING`` times the parent's rounding noise
        (at most ``NOISE_CAP``) where the parent is so ill-conditioned that this is larger."""
        return max(TOLERANCE[getattr(torch, self.dtype)], min(CONDITIONING * self.noise, NOISE_CAP))

    @property
    def preserved(self) -> bool:
        return self.max_rel_err <= self.tolerance


def calibrate_bn(module: torch.nn.Module, batch: torch.Tensor) -> torch.nn.Module:
    """``module`` in eval mode with the batch-norm statistics of one train-mode pass over ``batch``
    (that batch's own mean and variance, as in a trained network). A fresh network's 0 and 1, or
    random statistics, leave a deep network's outputs all but constant in its input, and a
    constant network agrees with any wrong morph of itself."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: after one pass, exactly the batch's statistics
    module.train()
    with torch.no_grad():
        module(batch)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return module.eval()


def trained_like(graph: ArchGraph, weights: Weights, batch: torch.Tensor, seed: int = 0) -> Weights:
    """``weights`` as a trained network's, in ``batch``'s dtype: random batch-norm affine terms and
    biases (seeded), so that no batch norm is the identity a fresh network starts with (probing only
    fresh networks would miss a morph that mishandles a trained batch norm), then the batch-norm
    statistics of one train-mode pass over ``batch`` (:func:`calibrate_bn`), so that the outputs
    depend on the input (check with :func:`sensitivity`)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in weights.items():
        if key.endswith("bias") or (key.endswith("weight") and value.dim() == 1):
            value = torch.randn(value.shape, generator=gen) * 0.3 + (1.0 if key.endswith("weight") else 0.0)
        out[key] = value
    model = calibrate_bn(compile_graph(graph, out).to(batch.dtype), batch)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


SENSITIVITY_FLOOR = 1e-3


def sensitivity(model: torch.nn.Module, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                seed: int = 0) -> float:
    """How much ``model``'s outputs depend on its input: the relative change between two random
    batches. Below :data:`SENSITIVITY_FLOOR` an exactness check on the model cannot fail."""
    gen = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(4, *shape, generator=gen, dtype=dtype) for _ in range(2))
    with torch.no_grad():
        return rel_err(model(b), model(a))


def probe_inputs(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0, batches: int = 3) -> list[torch.Tensor]:
    """Random normal batches plus one constant batch (which exposes biases leaking into padding)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(4, *shape, generator=gen, dtype=dtype) * (1 + i) for i in range(batches)]
    inputs.append(torch.ones(2, *shape, dtype=dtype))
    return inputs


def verify(
    parent: ArchGraph,
    parent_weights: Weights,
    child: ArchGraph,
    child_weights: Weights,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    inputs: list[torch.Tensor] | None = None,
) -> Verification:
    """Compare parent and child in eval mode and in train mode on the same inputs, and measure
    the parent's own rounding noise on them (which sets the tolerance of an ill-conditioned one).
    One network is held at a time: the parent is compiled once, for its outputs and its noise, and
    freed before the child is compiled (a float64 VGG's classifier alone is 0.8 GB)."""
    inputs = [x.to(dtype) for x in inputs or probe_inputs(parent.input_shape, dtype, seed)]
    want, noise = _run(parent, parent_weights, inputs, dtype, seed)
    got, _ = _run(child, child_weights, inputs, dtype)
    errors = {mode: max(rel_err(g, w) for g, w in zip(got[mode], want[mode], strict=True)) for mode in want}
    return Verification(errors["eval"], errors["train"], str(dtype).removeprefix("torch."), noise)


def _run(graph: ArchGraph, weights: Weights, inputs: list[torch.Tensor], dtype: torch.dtype,
         seed: int | None = None) -> tuple[dict[str, list[torch.Tensor]], float]:
    """``graph``'s outputs on ``inputs`` (already in ``dtype``) in eval and in train mode, and with a
    ``seed`` its rounding noise (:func:`_noise`; else 0), from one compiled copy, freed before this returns."""
    model = compile_graph(graph, weights).to(dtype)
    outputs, noise = {}, 0.0
    with torch.no_grad():
        for mode in ("eval", "train"):  # eval first: a train-mode pass moves the batch-norm statistics
            _set_mode(model, mode)
            outputs[mode] = [model(x) for x in inputs]
            if mode == "eval" and seed is not None:
                noise = _noise(model, weights, inputs, outputs[mode], dtype, seed)
    # free its weights now: a compiled fx.GraphModule is in a reference cycle (its graph's owning
    # module), which would hold them until the next collection
    model.to_empty(device="meta")
    return outputs, noise


def _set_mode(model: torch.nn.Module, mode: str) -> None:
    """``model`` in eval mode, or in train mode with its dropout off: the train-mode check is of
    batch statistics, and dropout's masks, drawn afresh for parent and child, would differ."""
    model.train(mode == "train")
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.eval()


def _noise(model: torch.nn.Module, weights: Weights, inputs: list[torch.Tensor], outputs: list[torch.Tensor],
           dtype: torch.dtype, seed: int) -> float:
    """The rounding noise of ``model`` (compiled from ``weights``, in ``dtype`` and eval mode), whose
    outputs on ``inputs`` are ``outputs``: how far they move, relative to their largest, when every
    weight moves by one unit in its last place (a seeded random sign each), which any
    reimplementation of the network carries. About 1e-15 in float64 for the built-in seeds and the
    torchvision ResNets; about 1e-9 for an EfficientNet-B0 whose batch norms saw one batch (channels
    with a running variance near 0 divide by sqrt(eps) at every stage). The weights move in place
    and are restored from ``weights`` after (the values it was compiled from): no second copy."""
    gen = torch.Generator().manual_seed(seed)
    eps = torch.finfo(dtype).eps
    state = model.state_dict()  # shares its tensors with the model
    for key, value in weights.items():
        if value.is_floating_point():  # a factor 1 - eps or 1 + eps, exactly
            state[key].mul_(torch.randint(0, 2, value.shape, generator=gen, dtype=dtype).mul_(2 * eps).add_(1 - eps))
    try:
        return max(rel_err(model(x), y) for x, y in zip(inputs, outputs, strict=True))
    finally:
        for key, value in weights.items():
            if value.is_floating_point():
                state[key].copy_(value)
