"""Growing on a fixed schedule (the benchmark's ``grow`` arm): exact at every step, on time."""

from __future__ import annotations

import time

import pytest

from morphnas.errors import ConfigError
from morphnas.ir import compile_graph, cost, init_weights, load_arch
from morphnas.ir.layers import Conv2d
from morphnas.search.grow import GrowthStep, grow, resnet_schedule
from morphnas.train import TrainConfig, evaluate, load_dataset


def test_scheduled_growth_is_exact_at_every_step_and_keeps_the_time() -> None:
    data = load_dataset("digits", augment=False)
    graph = load_arch("resnet8", data.input_shape, data.num_classes)
    weights = init_weights(graph, 0)
    seen = []

    def on_step(i, grown_graph):
        seen.append((i, cost(grown_graph)["params"]))

    started = time.time()
    grown = grow(graph, weights, data, TrainConfig(epochs=1000, batch_size=64), seconds=9.0,
                 schedule=resnet_schedule(), on_step=on_step)
    wall = time.time() - started
    assert wall < 9.0 * 1.05 + 2.0  # each segment ends at its moment (a step and a validation each)
    assert len(grown.runs) == 3 and all(run.epochs > 0 for run in grown.runs)
    # every growth step computed what the network computed before it (float32 verifier tolerance)
    assert len(grown.preservation) == 2 and max(grown.preservation) < 1e-5
    params = [cost(graph)["params"], *(p for _, p in seen)]
    assert [i for i, _ in seen] == [0, 1] and params[0] < params[1] < params[2]
    assert grown.graph.shapes()["s3b0_relu"][0] == 2 * graph.shapes()["s3b0_relu"][0]  # twice as wide
    def convs(g):
        return sum(isinstance(e.layer, Conv2d) for e in g.edges())

    assert convs(grown.graph) == convs(graph) + 3  # one more in each stage
    model = compile_graph(grown.graph, grown.weights)
    assert evaluate(model, data.val) == pytest.approx(grown.runs[-1].val_error)
    assert evaluate(model, data.val) < 0.8  # it learned across the growth (chance: 0.9)


def test_growth_steps_must_be_inside_the_budget_in_order() -> None:
    data = load_dataset("digits", augment=False)
    graph = load_arch("cnn", data.input_shape, data.num_classes)
    bad = (GrowthStep(0.6, ()), GrowthStep(0.3, ()))
    with pytest.raises(ConfigError, match="increasing fractions"):
        grow(graph, init_weights(graph, 0), data, TrainConfig(epochs=1), 1.0, bad)
