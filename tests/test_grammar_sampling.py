"""1,000 descriptors sampled from the default search space all give valid, compilable children."""

import collections

import optuna
import pytest
import torch

from morphnas.grammar.rules import get_rule
from morphnas.grammar.sampling import suggest_descriptor
from morphnas.grammar.space import load_space
from morphnas.ir import compile_graph, cost, init_weights, load_arch

pytestmark = pytest.mark.slow


def test_default_space_descriptors_yield_valid_children():
    space = load_space("default")
    seed = load_arch(space.seed.arch, (1, 28, 28), 10, shortcut=space.seed.shortcut)
    weights = init_weights(seed, 0)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    rules = collections.Counter()
    over = 0
    x = torch.randn(2, 1, 28, 28)
    for i in range(1000):
        trial = study.ask()
        descriptor = suggest_descriptor(trial, space.rules)
        child = get_rule(descriptor.rule).apply(seed, weights, descriptor, seed=i)
        c = cost(child.graph)  # validates and compiles
        over += c["params"] > space.limits.max_params or c["macs"] > space.limits.max_macs
        rules[descriptor.rule] += 1
        if i % 50 == 0:  # a forward pass now and then (cost already ran one at batch 1)
            assert compile_graph(child.graph, child.weights).eval()(x).shape == (2, 10)
        study.tell(trial, 0.0)
    print("rules:", dict(rules), "over the limits:", over)
    assert set(rules) == set(space.rules)
    assert over == 0  # one morph of the seed never leaves the default limits
