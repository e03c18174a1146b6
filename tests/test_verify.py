"""The verifier holds one network at a time and measures what compiling every pass afresh measures."""

import importlib
import weakref

import pytest
import torch
from reference_nets import trained_weights

from morphnas.ir import ArchGraph, compile_graph, resnet
from morphnas.ir.compile import rel_err
from morphnas.ir.layers import Activation, BatchNorm2d, Conv2d, Dropout, GlobalAvgPool, Linear
from morphnas.morph import MORPHS, apply_morph, probe_inputs, verify

verifier = importlib.import_module("morphnas.morph.verify")  # the package's `verify` is the function

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: a second thread only adds waiting


def fresh_verification(parent, parent_weights, child, child_weights, dtype, inputs, seed=0):
    """The eval and train errors and the rounding noise, each network compiled afresh for every
    pass and the moved parent built from a moved copy of its weights (what the verifier did when
    it held seven copies of a network at once)."""
    inputs = [x.to(dtype) for x in inputs]

    def outputs(graph, weights, train):
        model = compile_graph(graph, weights).to(dtype).train(train)
        with torch.no_grad():
            return [model(x) for x in inputs]

    errors = [max(map(rel_err, outputs(child, child_weights, train), outputs(parent, parent_weights, train)))
              for train in (False, True)]
    gen, eps = torch.Generator().manual_seed(seed), torch.finfo(dtype).eps
    moved = {k: v.to(dtype) * (1 + eps * (torch.randint(0, 2, v.shape, generator=gen).to(dtype) * 2 - 1))
             if v.is_floating_point() else v for k, v in parent_weights.items()}
    noise = max(map(rel_err, outputs(parent, moved, False), outputs(parent, parent_weights, False)))
    return *errors, noise


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_verify_compiles_each_network_once_and_measures_what_fresh_copies_measure(dtype, monkeypatch):
    graph = resnet(8, (3, 12, 12), num_classes=10)
    weights = {k: v.double() if v.is_floating_point() else v for k, v in trained_weights(graph).items()}
    child = apply_morph("widen", graph, weights, MORPHS["widen"].sites(graph)[-1], seed=0)
    inputs = probe_inputs(graph.input_shape, dtype)
    expected = fresh_verification(graph, weights, child.graph, child.weights, dtype, inputs)

    compiled = []  # per network compiled so far, its parameters and buffers

    def compile_one_at_a_time(*args):
        assert all(ref() is None for refs in compiled for ref in refs), "an earlier network's weights are held"
        model = compile_graph(*args)
        compiled.append([weakref.ref(t) for t in [*model.parameters(), *model.buffers()]])
        return model

    monkeypatch.setattr(verifier, "compile_graph", compile_one_at_a_time)
    check = verify(graph, weights, child.graph, child.weights, dtype=dtype, inputs=inputs)
    assert len(compiled) == 2  # the parent (outputs and noise), then the child
    assert (check.max_rel_err, check.train_max_rel_err, check.noise) == expected
    assert check.noise > 0 and check.preserved
    same = verify(graph, weights, graph, weights, dtype=dtype, inputs=inputs)
    assert same.max_rel_err == same.train_max_rel_err == 0  # the moved weights were put back exactly


def test_train_mode_checks_batch_statistics_with_dropout_off():
    """Dropout draws its masks afresh for parent and child (of another shape where a layer was
    widened), so the train-mode error would be noise; the check keeps dropout off and the batch
    norms in train mode, where a widened classifier is exact."""
    g = ArchGraph((1, 6, 6))
    for blob in ("input", "c", "n", "r", "f", "h", "d", "out"):
        g.add_blob(blob)
    g.add_layer("conv", "input", "c", Conv2d(1, 4, 3, 1, 1))
    g.add_layer("bn", "c", "n", BatchNorm2d(4))
    g.add_layer("relu", "n", "r", Activation("relu"))
    g.add_layer("gap", "r", "f", GlobalAvgPool())
    g.add_layer("fc1", "f", "h", Linear(4, 16))
    g.add_layer("drop", "h", "d", Dropout(0.5))
    g.add_layer("fc", "d", "out", Linear(16, 3))
    graph = g.validate()
    weights = trained_weights(graph)
    assert "h" in MORPHS["widen"].sites(graph)
    child = apply_morph("widen", graph, weights, "h", seed=0)  # fc1's 16 outputs, and the dropout's
    check = verify(graph, weights, child.graph, child.weights, dtype=torch.float64)
    assert check.preserved and check.train_max_rel_err < 1e-10
