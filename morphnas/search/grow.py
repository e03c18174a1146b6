"""Growing on a fixed schedule: a network trained for a time budget, morphed at set moments.

No search and no selection: at each :class:`GrowthStep` (a fraction of the budget) the network
is rewritten by exact morphs, verified to compute what it computed, and trained on from its own
weights. The whole run follows one cosine cycle of the learning rate over the budget, as the
network trained alone for the budget would, so the only difference from that is the growth.
This is the schedule of the growth methods (Net2Net, Chen et al. 2016; Firefly, Wu et al. 2020)
with Wei et al.'s morphs, and the ``grow`` arm that tells "growing pays" from "searching pays".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from morphnas.errors import ConfigError
from morphnas.ir import ArchGraph, Weights, compile_graph
from morphnas.morph import apply_morph, verify
from morphnas.train import Dataset, TrainConfig, TrainResult, train


@dataclass(frozen=True)
class GrowthStep:
    """At fraction ``at`` of the budget, apply ``morphs``: (morph name, site, params) in order."""

    at: float
    morphs: tuple[tuple[str, str, dict[str, Any]], ...]


def resnet_schedule(stages: int = 3) -> tuple[GrowthStep, ...]:
    """For the CIFAR ResNets (:func:`morphnas.ir.resnet`): twice the width everywhere at a third
    of the budget (``expand``, MorphNet's uniform multiplier grown by exact widening), then one
    more convolution in the last block of each stage at two thirds (``deepen``, eq. 2)."""
    return (
        GrowthStep(1 / 3, (("expand", "input", {"factor": 2.0}),)),
        GrowthStep(2 / 3, tuple(("deepen", f"s{s}b0_2_conv", {}) for s in range(1, stages + 1))),
    )


@dataclass
class Grown:
    """What a scheduled growth made: the network, its training runs (one per segment), and the
    largest relative preservation error of each growth step's morphs (the verifier's)."""

    graph: ArchGraph
    weights: Weights
    runs: list[TrainResult] = field(default_factory=list)
    preservation: list[float] = field(default_factory=list)


def grow(graph: ArchGraph, weights: Weights, data: Dataset, config: TrainConfig, seconds: float,
         schedule: tuple[GrowthStep, ...], seed: int = 0,
         on_step: Callable[[int, ArchGraph], None] | None = None) -> Grown:
    """Train ``graph`` for ``seconds`` with ``config`` (its ``epochs`` bound each segment),
    growing it by ``schedule``; each segment covers its part of one learning-rate cycle and ends
    at its wall-clock moment. ``on_step(i, graph)`` is called after growth step ``i``."""
    moments = [step.at for step in schedule]
    if moments != sorted(moments) or not all(0 < at < 1 for at in moments):
        raise ConfigError(f"growth steps must be at increasing fractions in (0, 1), got {moments}")
    started = time.time()
    grown = Grown(graph, dict(weights))
    bounds = [0.0, *moments, 1.0]
    calibration = data.train.x[:256]
    for i, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        if i > 0:
            grown.graph, grown.weights, error = _apply(schedule[i - 1], grown, calibration, seed + i)
            grown.preservation.append(error)
            if on_step is not None:
                on_step(i - 1, grown.graph)
        model = compile_graph(grown.graph, grown.weights)
        segment = replace(config, cycle=(start, end), deadline=started + end * seconds, time_limit=None)
        grown.runs.append(train(model, data, segment))
        grown.weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return grown


def _apply(step: GrowthStep, grown: Grown, calibration: torch.Tensor, seed: int
           ) -> tuple[ArchGraph, Weights, float]:
    graph, weights, worst = grown.graph, grown.weights, 0.0
    for k, (name, site, params) in enumerate(step.morphs):
        result = apply_morph(name, graph, weights, site, params or None, seed=seed * 100 + k, calibration=calibration)
        check = verify(graph, weights, result.graph, result.weights, inputs=[calibration[:64]])
        worst = max(worst, check.max_rel_err)
        graph, weights = result.graph, result.weights
    return graph, weights, worst
