"""Every export format, reloaded the way a user would, reproduces the compiled module's logits."""

import json
import subprocess
import sys
import sysconfig

import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

import morphnas.export as mx
from morphnas.errors import CheckpointError, ConfigError
from morphnas.export import ExportMismatchError, export_bundle, export_onnx, export_program, export_python, load
from morphnas.ir import (
    LAYER_TYPES,
    Activation,
    AdaptiveAvgPool2d,
    ArchGraph,
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
    compile_graph,
    init_weights,
    resnet,
)
from morphnas.ir.layers import ACTIVATIONS
from morphnas.train.checkpoint import save_checkpoint


def randomise(graph: ArchGraph, seed: int) -> dict[str, torch.Tensor]:
    """Default-initialised convs and linears; random BN statistics and affines; P-activation slopes off 1."""
    weights = init_weights(graph, seed)
    gen = torch.Generator().manual_seed(seed)
    kinds = {e.name: type(e.layer) for e in graph.edges()}
    for key, value in weights.items():
        layer, param = key.rsplit(".", 1)
        if kinds[layer] in (BatchNorm2d, BatchNorm1d) and value.is_floating_point():
            if param in ("running_var", "weight"):
                weights[key] = torch.rand(value.shape, generator=gen) + 0.5
            else:
                weights[key] = torch.randn(value.shape, generator=gen) * 0.2
        elif kinds[layer] is ParametricActivation:
            weights[key] = torch.rand(value.shape, generator=gen) * 0.6 + 0.2
    return weights


def zoo_graph() -> ArchGraph:
    """Every layer type and both merges, as a morphed network would have them.

    conv1 -> BN (random statistics) -> P-ReLU (8 learned slopes) -> a TYPE-II branch (3x3 and
    grouped 1x1 convs added) into a blob widened to 12 channels -> P-tanh -> an option-A shortcut
    with a scrambled (non-centred) channel map, added to a strided conv -> scaled identities -> a
    concat blob -> a channel shuffle, cut into two channel slices concatenated the other way round ->
    pools, global pooling and adaptive pooling to 3x3 + flatten + linear added -> BN1d -> P-gelu
    -> dropout -> every plain activation added to an identity -> the classifier. A dilated
    strided conv is added to the strided conv.
    """
    g = ArchGraph((3, 8, 8))
    for blob in ("input", "c1", "n1", "p1", "wide", "t1", "sc", "s2", "e1", "sh", "lo", "hi", "mp", "ap", "ad",
                 "fl", "feat", "featn", "g1", "dr", "mix", "out"):
        g.add_blob(blob)
    g.add_blob("cat", merge="concat")
    g.add_blob("swapped", merge="concat")
    g.add_layer("conv1", "input", "c1", Conv2d(3, 8, 3, 1, 1, bias=False))
    g.add_layer("bn1", "c1", "n1", BatchNorm2d(8))
    g.add_layer("prelu", "n1", "p1", ParametricActivation("relu", 8))
    g.add_layer("branch_a", "p1", "wide", Conv2d(8, 12, 3, 1, 1))
    g.add_layer("branch_b", "p1", "wide", Conv2d(8, 12, 1, 1, 0, groups=4))
    g.add_layer("ptanh", "wide", "t1", ParametricActivation("tanh", 1))
    g.add_layer("shortcut", "t1", "sc", ShortcutA(12, 16, 2, (15, 0, 3, 7, 1, 9, 2, 4, 11, 5, 13, 6)))
    g.add_layer("conv2", "t1", "sc", Conv2d(12, 16, 3, 2, 1))
    g.add_layer("conv_dilated", "t1", "sc", Conv2d(12, 16, 3, 2, 2, bias=False, dilation=2))
    g.add_layer("halve", "sc", "s2", Identity(0.5))
    g.add_layer("cat_conv", "s2", "cat", Conv2d(16, 4, 1))
    g.add_layer("cat_id", "s2", "cat", Identity(-1.5))
    g.reorder("cat", ["cat_id", "cat_conv"])  # not insertion order
    g.add_layer("elu", "cat", "e1", Activation("elu"))
    g.add_layer("shuffle", "e1", "sh", ChannelShuffle(4))
    g.add_layer("first", "sh", "lo", ChannelSlice(0, 12))
    g.add_layer("rest", "sh", "hi", ChannelSlice(12, 20))
    g.add_layer("hi_id", "hi", "swapped", Identity())
    g.add_layer("lo_id", "lo", "swapped", Identity())
    g.add_layer("maxpool", "swapped", "mp", Pool2d("max", 2, 2))
    g.add_layer("avgpool", "mp", "ap", Pool2d("avg", 3, 1, 1))
    g.add_layer("gap", "ap", "feat", GlobalAvgPool())
    g.add_layer("adaptive", "ap", "ad", AdaptiveAvgPool2d(3))
    g.add_layer("flat", "ad", "fl", Flatten())
    g.add_layer("fc0", "fl", "feat", Linear(20 * 3 * 3, 20))
    g.add_layer("bn1d", "feat", "featn", BatchNorm1d(20))
    g.add_layer("pgelu", "featn", "g1", ParametricActivation("gelu", 20))
    g.add_layer("drop", "g1", "dr", Dropout(0.3))
    for kind in (kind for kind in ACTIVATIONS if kind != "elu"):  # elu is above
        g.add_layer(f"act_{kind}", "dr", "mix", Activation(kind))
    g.add_layer("skip", "dr", "mix", Identity())
    g.add_layer("fc", "mix", "out", Linear(20, 10))
    return g.validate()


def resnet_graph() -> ArchGraph:
    return resnet(8, (1, 16, 16))


NETS = {"zoo": zoo_graph, "resnet8": resnet_graph}


@pytest.fixture(scope="module", params=sorted(NETS))
def net(request):
    graph = NETS[request.param]()
    weights = randomise(graph, seed=len(request.param))
    slopes = [v for k, v in weights.items() if k.split(".")[0] in ("prelu", "ptanh", "pgelu")]
    assert all((s - 1).abs().min() > 1e-3 for s in slopes)
    reference = compile_graph(graph, weights).eval()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(5, *graph.input_shape, generator=gen)
    with torch.no_grad():
        logits = reference(x)
    return request.param, graph, weights, x, logits


def test_zoo_has_everything():
    graph = zoo_graph()
    types = {e.layer.type for e in graph.edges()}
    assert types == {kind for kind, cls in LAYER_TYPES.items() if cls.__module__ == Layer.__module__}  # not tests'
    assert any(graph.merge(b) == "concat" for b in graph.blobs())


def test_onnx_reproduces_logits(net, tmp_path):
    name, graph, weights, x, logits = net
    path = tmp_path / f"{name}.onnx"
    diff = export_onnx(graph, weights, path)
    assert 0 <= diff <= 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and isinstance(inp.shape[0], str)  # a dynamic batch dimension
    for batch in (1, 5):
        out = session.run(None, {"input": x[:batch].numpy()})[0]
        assert torch.from_numpy(out).sub(logits[:batch]).abs().max() <= 1e-4

    perturbed = dict(weights, **{"fc.bias": weights["fc.bias"] + 1e-3})
    with pytest.raises(ExportMismatchError) as err:
        mx.verify_onnx(graph, perturbed, path)
    assert 1e-4 < err.value.max_abs_diff < 2e-3 and err.value.path == path and path.is_file()


def test_pt2_reproduces_logits(net, tmp_path):
    name, graph, weights, x, logits = net
    path = tmp_path / f"{name}.pt2"
    assert export_program(graph, weights, path) <= 1e-5
    module = torch.export.load(str(path)).module()  # our own file
    for batch in (1, 5):
        assert module(x[:batch]).detach().sub(logits[:batch]).abs().max() <= 1e-5
    with pytest.raises(CheckpointError, match="torch.export.load"):
        load(path)  # morphnas.load never unpickles


def test_bundle_reproduces_logits_and_load_reads_checkpoints(net, tmp_path):
    name, graph, weights, x, logits = net
    bundle = tmp_path / "bundle"
    assert export_bundle(graph, weights, bundle) <= 1e-5
    assert sorted(p.name for p in bundle.iterdir()) == ["arch.json", "weights.safetensors"]
    module = load(bundle)
    assert not module.training
    assert module(x).detach().sub(logits).abs().max() <= 1e-5
    assert export_bundle(graph, weights, bundle, metrics={"val_error": 0.25}) <= 1e-5  # replaces its own bundle
    assert json.loads((bundle / "metrics.json").read_text()) == {"val_error": 0.25}
    checkpoint = save_checkpoint(tmp_path / "ckpt", arch=graph.to_json(), weights=weights, metrics={})
    assert load(checkpoint)(x).detach().sub(logits).abs().max() <= 1e-5


def test_python_source_runs_in_a_fresh_interpreter_without_morphnas(tmp_path):
    """Both nets' generated files run where morphnas cannot be imported and give the same logits."""
    expected = {}
    for name, build in NETS.items():
        graph = build()
        weights = randomise(graph, seed=len(name))
        assert export_python(graph, weights, tmp_path / f"net_{name}.py") <= 1e-5
        code = (tmp_path / f"net_{name}.py").read_text()
        assert "import morphnas" not in code and "from morphnas" not in code
        x = torch.randn(4, *graph.input_shape, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            expected[f"{name}.y"] = compile_graph(graph, weights).eval()(x)
        expected[f"{name}.x"] = x
    save_file(expected, str(tmp_path / "io.safetensors"))
    # -I ignores PYTHONPATH and the current directory; -S skips site-packages' .pth hooks, which is
    # where the editable morphnas install lives. The path is then the standard library, the export
    # directory and the venv's site-packages (for torch and safetensors) only.
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    script = f"""
import json, sys
sys.path[:0] = {[str(tmp_path), *site]!r}
try:
    import morphnas
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("morphnas is importable: " + morphnas.__file__)
from safetensors.torch import load_file
import torch
io = load_file({str(tmp_path / "io.safetensors")!r})
diffs = {{}}
for name in {sorted(NETS)!r}:
    model = __import__("net_" + name).load()
    with torch.no_grad():
        diffs[name] = (model(io[name + ".x"]) - io[name + ".y"]).abs().max().item()
assert not any(m == "morphnas" or m.startswith("morphnas.") for m in sys.modules)
print(json.dumps(diffs))
"""
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    diffs = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(diffs) == set(NETS) and max(diffs.values()) <= 1e-5


def test_python_source_trains_like_the_compiled_module(tmp_path):
    """Same parameters, same train-mode forward (BN batch statistics), same gradients."""
    graph = resnet_graph()
    weights = randomise(graph, seed=1)
    export_python(graph, weights, tmp_path / "trainable.py")
    from morphnas.export.source import _import_file

    exported = _import_file(tmp_path / "trainable.py").load().train()
    compiled = compile_graph(graph, weights).train()
    assert dict(exported.named_parameters()).keys() == dict(compiled.named_parameters()).keys()
    x = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    exported(x).square().sum().backward()
    compiled(x).square().sum().backward()
    grads = {name: p.grad for name, p in compiled.named_parameters()}
    for name, p in exported.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-5)
    for key, value in compiled.state_dict().items():
        torch.testing.assert_close(exported.state_dict()[key], value)  # BN running statistics updated alike


def test_generated_source_reads_like_hand_written_pytorch():
    code = mx.python_source(resnet_graph())
    assert "out = self.s1b0_1_conv(x)" in code and "x = out + x" in code
    assert "x = out + self.s2b0_shortcut(x)" in code and "tuple(range(8, 24))" in code
    assert "ParametricActivation" not in code and "import torch.nn.functional" not in code


def test_bad_outputs_are_config_errors(tmp_path):
    graph = resnet_graph()
    weights = init_weights(graph)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot write"):
        export_program(graph, weights, blocker / "net.pt2")
    with pytest.raises(ConfigError, match="cannot write"):
        export_bundle(graph, weights, blocker / "bundle")
    with pytest.raises(ConfigError, match="is a directory"):
        export_program(graph, weights, tmp_path)
    with pytest.raises(ConfigError, match=".py file"):
        export_python(graph, weights, tmp_path / "net.txt")
    with pytest.raises(ConfigError, match="module name"):
        export_python(graph, weights, tmp_path / "my-net.py")
    with pytest.raises(ConfigError, match="shadow"):
        export_python(graph, weights, tmp_path / "torch.py")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        export_bundle(graph, weights, tmp_path)  # holds "file": not a bundle
    with pytest.raises(ConfigError, match="unknown export format"):
        mx.export(graph, weights, tmp_path / "x.bin", "tflite")
    with pytest.raises(ConfigError, match="cannot tell"):
        mx.infer_format(tmp_path / "x.bin")


def test_load_rejects_what_is_not_a_bundle(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="missing arch.json"):
        load(tmp_path)
    graph = resnet_graph()
    export_bundle(graph, init_weights(graph), tmp_path / "b", check=False)
    (tmp_path / "b" / "arch.json").write_text(json.dumps(resnet(14, (1, 16, 16)).to_json()))
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load(tmp_path / "b")
    (tmp_path / "b" / "weights.safetensors").write_bytes(b"\x80\x04pickle?")
    with pytest.raises(CheckpointError, match="corrupt"):
        load(tmp_path / "b")
