"""Random sequences of 20+ exact morphs, drawn from every registered morph, stay exact and exportable."""

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_nets import trained_weights

from morphnas.ir import ArchGraph, Weights, compile_graph, mlp, resnet
from morphnas.morph import MORPHS, apply_morph, probe_inputs, verify

EXACT = sorted(name for name, spec in MORPHS.items() if spec.exact)
HITS: Counter = Counter()  # morph name -> times applied, over all examples (for reports)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: a second thread only adds waiting

steps = st.lists(
    st.tuples(st.sampled_from(EXACT), st.integers(0, 2**16), st.integers(0, 2**31 - 1)), min_size=20, max_size=24
)


def compose(graph: ArchGraph, weights: Weights, plan: list[tuple[str, int, int]]) -> tuple[ArchGraph, Weights]:
    """Apply one morph per step: the first exact morph, from the drawn one on, that has a site."""
    for pick, where, seed in plan:
        for offset in range(len(EXACT)):
            name = EXACT[(EXACT.index(pick) + offset) % len(EXACT)]
            sites = MORPHS[name].sites(graph)
            if sites:
                break
        else:
            pytest.fail(f"no registered exact morph applies to the graph (tried {EXACT})")
        result = apply_morph(name, graph, weights, sites[where % len(sites)], None, seed=seed)
        if result.exact:  # a morph may fall back to an approximation (its note says why): skip it
            graph, weights = result.graph, result.weights
            HITS[name] += 1
    return graph, weights


def check_child(parent: ArchGraph, parent_weights: Weights, child: ArchGraph, child_weights: Weights) -> None:
    inputs = probe_inputs(parent.input_shape, torch.float32, seed=0, batches=1)
    assert verify(parent, parent_weights, child, child_weights, inputs=inputs).max_rel_err <= 1e-4
    data = child.to_json()
    assert ArchGraph.from_json(data).to_json() == data
    module = compile_graph(child, child_weights).eval()
    exported = torch.export.export(module, (inputs[0],))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(inputs[0]), module(inputs[0]))


RESNET20 = resnet(20, (1, 16, 16))
RESNET20_WEIGHTS = trained_weights(RESNET20, seed=1)
MLP = mlp((1, 8, 8), hidden=32)
MLP_WEIGHTS = trained_weights(MLP, seed=1)


@pytest.mark.slow
@settings(max_examples=20, deadline=None, derandomize=True)
@given(plan=steps)
def test_random_morph_sequences_on_resnet20_stay_exact(plan):
    child, child_weights = compose(RESNET20, RESNET20_WEIGHTS, plan)
    check_child(RESNET20, RESNET20_WEIGHTS, child, child_weights)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(plan=steps)
def test_random_morph_sequences_on_the_mlp_stay_exact(plan):
    child, child_weights = compose(MLP, MLP_WEIGHTS, plan)
    check_child(MLP, MLP_WEIGHTS, child, child_weights)
