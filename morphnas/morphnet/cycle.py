"""Shrink-expand cycles: MorphNet's Algorithm 1 (Gordon et al., CVPR 2018).

1. Train with the resource-weighted sparsifying regulariser (here: starting from the current
   weights, for ``reg_epochs``).
2. Remove the channels whose scale fell below the threshold (:func:`~morphnas.morph.shrink.shrink`).
3. Find the largest uniform width multiplier within budget and apply it
   (:func:`~morphnas.morph.expand.expand_to_budget`).
4. Repeat for ``iterations`` (the seed summary's §2.3: one iteration already helps).

After each expand the network is trained again (``epochs``): fine-tuned from the inherited
weights (``retrain="finetune"``, the morphism way) or re-initialised and trained from scratch
(``retrain="scratch"``, MorphNet's protocol for judging a structure).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from morphnas.errors import ConfigError
from morphnas.ir import ArchGraph, Conv2d, Linear, Weights, compile_graph, cost, init_weights
from morphnas.morph.channels import AGGREGATES, DEFAULT_THRESHOLD, TARGETS
from morphnas.morph.expand import expand_to_budget, narrowest_cost
from morphnas.morph.shrink import shrink
from morphnas.morphnet.regulariser import regulariser, train_regularised
from morphnas.train import Dataset, TrainConfig, train

DEFAULT_STRENGTH = 2.0
RETRAIN = ("finetune", "scratch")
CALIBRATION_SIZE = 256
_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(x?)\s*$")


def parse_budget(text: str, seed_cost: float) -> float:
    """``"30000000"`` (absolute) or ``"0.5x"`` (times ``seed_cost``) -> a positive budget."""
    match = _BUDGET.match(str(text))
    if not match:
        raise ConfigError(f"--budget must be a number (e.g. 30000000) or a multiple of the seed's cost "
                          f"(e.g. 0.5x), got {text!r}")
    value = float(match.group(1)) * (seed_cost if match.group(2) else 1.0)
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"--budget must be positive, got {text!r}")
    return value


def layer_widths(graph: ArchGraph) -> dict[str, int]:
    """Output channels of every convolution and linear layer, in topological order."""
    shapes = graph.shapes()
    order = {blob: i for i, blob in enumerate(graph.topological_blobs())}
    edges = sorted((e for e in graph.edges() if isinstance(e.layer, Conv2d | Linear)),
                   key=lambda e: (order[e.dst], e.name))
    return {e.name: int(e.layer.output_shape(shapes[e.src])[0]) for e in edges}


@dataclass(frozen=True)
class CycleConfig:
    """Everything one ``morphnet`` run needs besides the network and the data."""

    budget: float
    target: str = "macs"
    iterations: int = 1
    epochs: float = 3.0  # training after each expand
    reg_epochs: float | None = None  # regularised training before each shrink (default: epochs)
    strength: float = DEFAULT_STRENGTH
    threshold: float = DEFAULT_THRESHOLD
    aggregate: str = "max"
    lr: float = 0.1
    batch_size: int = 128
    weight_decay: float = 1e-4
    seed: int = 0
    retrain: str = "finetune"
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.target in TARGETS, f"target must be one of {', '.join(TARGETS)}, got {self.target!r}"),
            (self.budget > 0, f"budget must be positive, got {self.budget}"),
            (self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}"),
            (self.epochs > 0, f"epochs must be > 0, got {self.epochs}"),
            (self.reg_epochs is None or self.reg_epochs > 0, f"reg_epochs must be > 0, got {self.reg_epochs}"),
            (self.strength >= 0, f"strength must be >= 0, got {self.strength}"),
            (self.threshold >= 0, f"threshold must be >= 0, got {self.threshold}"),
            (self.aggregate in AGGREGATES, f"aggregate must be one of {', '.join(AGGREGATES)}"),
            (self.retrain in RETRAIN, f"retrain must be one of {', '.join(RETRAIN)}, got {self.retrain!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def train_config(self, epochs: float, seed: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, lr=self.lr, batch_size=self.batch_size, weight_decay=self.weight_decay,
                           seed=seed, threads=self.threads)


@dataclass
class Iteration:
    """One shrink-expand cycle: widths and costs after each step, errors after each training."""

    index: int
    reg_val_error: float  # after the regularised training
    penalties: list[float]
    shrunk_widths: dict[str, int]
    shrunk_cost: dict[str, float | int]
    shrink_note: str
    shrink_error: float  # verifier's eval-mode max_rel_err of the shrink
    factor: float
    expanded_widths: dict[str, int]
    expanded_cost: dict[str, float | int]
    val_error: float  # after the training that follows the expand
    seconds: float = 0.0


@dataclass
class CycleResult:
    graph: ArchGraph
    weights: Weights
    iterations: list[Iteration] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(it) for it in self.iterations]


def morphnet(
    graph: ArchGraph,
    weights: Weights,
    data: Dataset,
    config: CycleConfig,
    *,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> CycleResult:
    """Run ``config.iterations`` shrink-expand cycles from ``(graph, weights)`` on ``data``."""
    emit = on_event or (lambda kind, info: None)
    calibration = data.train.x[:CALIBRATION_SIZE]
    result = CycleResult(graph, weights)
    for i in range(config.iterations):
        t0 = time.perf_counter()
        seed = config.seed + 1000 * (i + 1)
        penalty = regulariser(graph, config.target, strength=config.strength, aggregate=config.aggregate,
                              threshold=config.threshold)
        model = compile_graph(graph, weights)
        run = train_regularised(model, data, config.train_config(config.reg_epochs or config.epochs, seed), penalty)
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        emit("regularised", {"iteration": i, "val_error": run.result.val_error, "penalty": run.penalties[-1]})
        shrunk = shrink(graph, trained, threshold=config.threshold, aggregate=config.aggregate,
                        calibration=calibration)
        emit("shrunk", {"iteration": i, "note": shrunk.note, **cost(shrunk.graph)})
        expanded = expand_to_budget(shrunk.graph, shrunk.weights, config.budget, config.target, seed=seed,
                                    aggregate=config.aggregate, calibration=calibration)
        emit("expanded", {"iteration": i, "factor": expanded.factor, **expanded.cost})
        graph = expanded.graph
        weights = init_weights(graph, seed) if config.retrain == "scratch" else expanded.weights
        model = compile_graph(graph, weights)
        final = train(model, data, config.train_config(config.epochs, seed + 1))
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        emit("trained", {"iteration": i, "val_error": final.val_error})
        result.iterations.append(Iteration(
            index=i, reg_val_error=run.result.val_error, penalties=run.penalties,
            shrunk_widths=layer_widths(shrunk.graph), shrunk_cost=cost(shrunk.graph), shrink_note=shrunk.note,
            shrink_error=shrunk.verification.max_rel_err, factor=expanded.factor,
            expanded_widths=layer_widths(graph), expanded_cost=expanded.cost, val_error=final.val_error,
            seconds=time.perf_counter() - t0,
        ))
    result.graph, result.weights = graph, weights
    return result


def morphnet_from_scratch(
    graph: ArchGraph,
    data: Dataset,
    config: CycleConfig,
    *,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> tuple[CycleResult, dict[str, Any]]:
    """Train ``graph`` from fresh weights (seeded ``config.seed``) for ``config.epochs``, then run
    :func:`morphnet` from it. Returns the result and a summary: costs, validation errors and
    per-layer widths before and after (a removed layer has width 0), the target and the budget.

    ConfigError, before any training, when the budget is below the cost of the narrowest
    network (one channel per group). ``on_event("seed", ...)`` reports the trained seed.
    """
    floor = narrowest_cost(graph, config.target)
    if config.budget < floor:
        raise ConfigError(f"budget {config.budget:g} is below the cost of the narrowest network ({floor:g} "
                          f"{config.target} with one channel per group)")
    before = cost(graph)
    model = compile_graph(graph, init_weights(graph, config.seed))
    seed_run = train(model, data, config.train_config(config.epochs, config.seed))
    if on_event is not None:
        on_event("seed", {"val_error": seed_run.val_error, **before})
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = morphnet(graph, weights, data, config, on_event=on_event)
    after = cost(result.graph)
    widths_before = layer_widths(graph)
    summary = {
        "macs_before": int(before["macs"]),
        "macs_after": int(after["macs"]),
        "params_before": int(before["params"]),
        "params_after": int(after["params"]),
        "val_error_before": seed_run.val_error,
        "val_error_after": result.iterations[-1].val_error,
        "widths_before": widths_before,
        "widths_after": {**{name: 0 for name in widths_before}, **layer_widths(result.graph)},
        "target": config.target,
        "budget": config.budget,
    }
    return result, summary
