"""Importing PyTorch networks (issue #14): torchvision nets map onto the IR exactly, the rest is refused."""

import copy
import json

import pytest
import torch
import torchvision
from reference_nets import assert_sensitive, calibrate_bn
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.errors import MorphError, MorphnasError, TorchImportError
from morphnas.export import ONNX_TOLERANCE
from morphnas.export.onnx import export_onnx
from morphnas.ir import ArchGraph, Conv2d, compile_graph, from_torch, importer
from morphnas.ir.compile import rel_err
from morphnas.morph import MORPHS, apply_morph, verify
from morphnas.morph.shrink import shrink_sites
from morphnas.morph.width import widen_sites
from morphnas.search.seeds import seed_network
from morphnas.train.checkpoint import load_checkpoint

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: a second thread only adds waiting


def torchvision_net(name: str, shape: tuple[int, ...] = (3, 32, 32), seed: int = 0, **options) -> nn.Module:
    """A randomly initialised torchvision model with batch-norm statistics calibrated as a trained
    network's (BN is then not the identity), whose outputs are checked to depend on its input."""
    torch.manual_seed(seed)
    net = calibrate_bn(torchvision.models.get_model(name, weights=None, **options), shape, seed)
    assert_sensitive(net, shape)
    return net


def test_resnet18_imports_and_computes_the_same_outputs():
    net = torchvision_net("resnet18", (3, 64, 64))
    graph, weights, err = from_torch(net, (3, 64, 64))
    assert err <= 1e-10
    convs = [e for e in graph.edges() if isinstance(e.layer, Conv2d)]
    assert len(convs) == 20  # 16 in the blocks, the stem, 3 projection shortcuts
    assert weights["conv1.weight"].data_ptr() != net.conv1.weight.data_ptr()  # copied, not shared
    assert ArchGraph.loads(graph.dumps()).to_json() == graph.to_json()
    model = compile_graph(graph, weights).eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for scale in (1.0, 3.0):
            x = torch.randn(3, 3, 64, 64, generator=gen) * scale
            assert rel_err(model(x), net(x)) <= 1e-5
    assert net.training is False and not any(k.startswith("x.") for k in weights)


def test_an_import_that_does_not_reproduce_the_outputs_is_an_error(monkeypatch):
    """The final check is not a formality: break the copied weights and the import fails in one line."""
    original = importer.compile_graph

    def broken(graph, weights):
        weights = {k: v * 1.01 if k == "conv1.weight" else v for k, v in weights.items()}
        return original(graph, weights)

    monkeypatch.setattr(importer, "compile_graph", broken)
    with pytest.raises(TorchImportError, match=r"does not compute ResNet's outputs: max relative error") as err:
        from_torch(torchvision_net("resnet18"), (3, 32, 32))
    assert "\n" not in str(err.value)


class Sorting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.sort(self.conv(x), dim=1).values.mean(dim=(2, 3))


class Unevenly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, dilation=(1, 2)))

    def forward(self, x):
        return self.body(x).flatten(1)


class Scaled(nn.Module):
    def forward(self, x):
        return torch.flatten(x * 2.0, 1)


@pytest.mark.parametrize("net, message", [
    (Sorting(), "cannot import node 'sort' (sort): sort is not in the IR"),
    (Unevenly(), "cannot import node 'body_1' (Conv2d(4, 4, kernel_size=(3, 3), stride=(1, 1), dilation=(1, 2))): "
                 "non-square dilation (1, 2) is not in the IR"),
    (Scaled(), "cannot import node 'mul' (mul): only the product of two tensors is in the IR"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU()),
     "cannot import node '_1' (LeakyReLU(negative_slope=0.01)): LeakyReLU is not in the IR yet"),
    (nn.Sequential(nn.MaxPool2d(3, 2, ceil_mode=True)),
     "cannot import node '_0' (MaxPool2d(kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=True)): "
     "ceil_mode=True on a 32x32 input (a partial last window) is not in the IR"),
])
def test_what_the_ir_cannot_express_is_refused_in_one_line_naming_the_node(net, message):
    with pytest.raises(TorchImportError) as err:
        from_torch(net, (3, 32, 32))
    assert str(err.value) == message


def test_shared_weights_are_refused():
    conv = nn.Conv2d(3, 3, 3, padding=1)
    with pytest.raises(TorchImportError, match=r"node 'conv_1' .* module 'conv' is called again .* shared weights"):
        from_torch(_Twice(conv), (3, 8, 8))


class _Twice(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(self.conv(x)).flatten(1)


def test_depthwise_concat_and_relu6_networks_import():
    """mobilenet_v2 (depthwise convs, ReLU6, F.adaptive_avg_pool2d), squeezenet (ceil_mode pools whose windows
    all fit: the sizes agree with floor mode) and a DenseNet-style concat."""
    graph, _, err = from_torch(torchvision_net("mobilenet_v2", num_classes=10), (3, 32, 32))
    assert err <= 1e-10
    assert any(isinstance(e.layer, Conv2d) and e.layer.groups > 1 for e in graph.edges())
    assert from_torch(torchvision_net("squeezenet1_1", (3, 64, 64), num_classes=10), (3, 64, 64)).max_rel_err <= 1e-10
    graph, _, err = from_torch(_Dense(), (3, 16, 16))
    assert err <= 1e-10 and any(graph.merge(b) == "concat" for b in graph.blobs())


def test_squeeze_and_excitation_networks_with_trained_statistics_import():
    """efficientnet_b0 and mobilenet_v3: ``scale * x`` is a mul blob, the SE pool keeps a 1x1 map,
    and stochastic depth (the identity in eval mode) is imported as the identity. With calibrated
    batch norms efficientnet_b0's own float32 outputs are further than 1e-5 from its float64 ones,
    so the import is checked in float64, against 1e-10 or that float32 error scaled to float64."""
    net = torchvision_net("efficientnet_b0", num_classes=10)
    graph, weights, err = imported = from_torch(net, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        own = rel_err(net(x).double(), copy.deepcopy(net).double()(x.double()))
    assert own > 1e-5  # a float32 check at 1e-5 would refuse the network itself
    assert err <= imported.tolerance <= 1e-8
    assert sum(graph.merge(b) == "mul" for b in graph.blobs()) == 16  # one SE per MBConv block
    graph, _, err = from_torch(torchvision_net("mobilenet_v3_small", num_classes=10), (3, 32, 32))
    assert err <= 1e-10 and any(graph.merge(b) == "mul" for b in graph.blobs())


class _Excited(nn.Module):
    """A conv block with squeeze-and-excitation (``scale * x``) and a residual sum."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.SiLU())
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(6, 3, 1), nn.ReLU(), nn.Conv2d(3, 6, 1),
                                     nn.Hardsigmoid())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))

    def forward(self, x):
        x = self.stem(x)
        y = self.body(x)
        return self.head(x + self.squeeze(y) * y)


def test_every_morph_at_every_site_of_a_squeeze_and_excitation_block_is_exact():
    """Each morph at each of its sites of a small SE network (float64, borders included): products
    tie channels (widen, expand), branches into a product are summed first (branch, split_identity)."""
    torch.manual_seed(0)
    net = calibrate_bn(_Excited(), (3, 6, 6))
    assert_sensitive(net, (3, 6, 6))
    graph, weights, _ = from_torch(net, (3, 6, 6))
    assert [b for b in graph.blobs() if graph.merge(b) == "mul"] == ["mul"]
    assert "mul" in MORPHS["widen"].sites(graph)  # the product's channels grow with both operands'
    assert {"mul_in0", "mul_in1"} <= set(MORPHS["split_identity"].sites(graph))
    assert every_site_exact(graph, float64(weights)) > 100


def every_site_exact(graph: ArchGraph, weights: dict) -> int:
    """Apply every exact morph at every one of its sites (float64 weights) and check each child with
    the verifier (float64, borders included); returns how many were checked."""
    calibration = torch.randn(8, *graph.input_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    checked = 0
    for morph in sorted(MORPHS):
        if not MORPHS[morph].exact:
            continue
        for site in MORPHS[morph].sites(graph):
            child = apply_morph(morph, graph, weights, site, seed=1, calibration=calibration)
            check = verify(graph, weights, child.graph, child.weights, dtype=torch.float64)
            assert child.exact and check.max_rel_err <= 1e-10, (morph, site, check)
            checked += 1
    return checked


class _Dilated(nn.Module):
    """DeepLab-style dilated convolutions: dilation 2 in a residual block, a depthwise one at dilation 3,
    and a strided one at dilation 2 whose taps overhang the border."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=3, dilation=3, groups=8), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Conv2d(8, 12, 3, stride=2, padding=1, dilation=2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))

    def forward(self, x):
        x = self.stem(x)
        x = x + self.dw(self.a(x))
        return self.head(torch.relu(self.b(x)))


def test_every_morph_at_every_site_of_a_dilated_network_is_exact():
    """Kernel growth and TYPE-II branches pad a dilated kernel's padding by the dilation per tap, deepen's
    identity init keeps G's dilation on the factor that carries G; what composes taps next to each other
    refuses a dilated conv (morph_module does not list it, deepen's decompose says why)."""
    torch.manual_seed(0)
    net = calibrate_bn(_Dilated(), (3, 12, 12))
    assert_sensitive(net, (3, 12, 12))
    graph, weights, err = from_torch(net, (3, 12, 12))
    assert err <= 1e-10
    assert sorted(e.layer.dilation for e in graph.edges() if isinstance(e.layer, Conv2d)) == [1, 2, 2, 3]
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(compile_graph(graph, float64(weights)).eval()(x), copy.deepcopy(net).double()(x)) <= 1e-10
    assert "a_0" in MORPHS["grow_kernel"].sites(graph) and "a_0" not in MORPHS["morph_module"].sites(graph)
    assert every_site_exact(graph, float64(weights)) > 100
    with pytest.raises(MorphError, match=r"deepen: init='decompose' .* G has dilation 2"):
        apply_morph("deepen", graph, float64(weights), "a_0", {"init": "decompose"})
    with pytest.raises(MorphError, match=r"morph_module: 'a_0' is dilated \(dilation=2\)"):
        apply_morph("morph_module", graph, float64(weights), "a_0")


class _Dense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(7, 5, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        x = torch.cat([x, torch.relu(self.a(x))], 1)
        x = torch.cat([x, self.b(x)], dim=1)
        return self.fc(torch.flatten(self.pool(x), 1))


def float64(weights):
    return {k: v.double() if v.is_floating_point() else v for k, v in weights.items()}


@pytest.mark.parametrize("morph", ["widen", "deepen", "branch", "split_identity"])
def test_morphs_find_sites_in_imported_resnet18_and_stay_exact(morph):
    graph, weights, _ = from_torch(torchvision_net("resnet18", num_classes=10), (3, 32, 32))
    weights = float64(weights)
    site = {"widen": "layer2_0_relu", "deepen": "layer1_1_conv2", "branch": "layer3_0_downsample_0",
            "split_identity": "add_1_in1"}[morph]
    child = apply_morph(morph, graph, weights, site, seed=3)
    check = verify(graph, weights, child.graph, child.weights, dtype=torch.float64)
    assert child.exact and check.max_rel_err <= 1e-10, check


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small"])
def test_every_morph_kind_on_an_imported_network_is_exact_and_the_result_exports_to_onnx(name, tmp_path):
    """One site per morph (the middle one), applied one after another, each checked by the verifier
    in float64: with trained statistics mobilenet_v3_small's own float32 rounding exceeds 1e-5."""
    graph, weights, _ = from_torch(torchvision_net(name, num_classes=10), (3, 32, 32))
    weights = float64(weights)
    calibration = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    applied = []
    for seed, morph in enumerate(sorted(MORPHS)):
        sites = MORPHS[morph].sites(graph)
        site = sites[len(sites) // 2]
        child = apply_morph(morph, graph, weights, site, seed=seed, calibration=calibration)
        check = verify(graph, weights, child.graph, child.weights, dtype=torch.float64)
        assert child.exact == MORPHS[morph].exact, (morph, site, child.note)
        assert not child.exact or check.max_rel_err <= 1e-10, (morph, site, check)
        graph, weights = child.graph, child.weights
        applied.append(morph)
    assert applied == sorted(MORPHS)  # every kind found a site
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    assert export_onnx(graph, weights, tmp_path / f"{name}.onnx") <= ONNX_TOLERANCE  # onnxruntime agrees


def test_shufflenet_v2_imports_and_computes_torchvisions_outputs():
    """chunk(2, dim=1) is two channel slices, channel_shuffle's size, views and transpose one
    channel_shuffle layer, x.mean([2, 3]) a global average pool; float64 agrees with torchvision."""
    net = torchvision_net("shufflenet_v2_x0_5", num_classes=10)
    graph, weights, err = from_torch(net, (3, 32, 32))
    assert err <= 1e-10
    kinds = [e.layer.type for e in graph.edges()]
    assert kinds.count("channel_shuffle") == 16 and kinds.count("channel_slice") == 2 * 13  # 16 blocks, 13 stride 1
    assert ArchGraph.loads(graph.dumps()).to_json() == graph.to_json()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
    with torch.no_grad():
        assert rel_err(compile_graph(graph, float64(weights)).eval()(x), copy.deepcopy(net).double()(x)) <= 1e-10


class _Cut(nn.Module):
    """Channel slices, splits, views and shuffles as a user writes them by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.shuffle = nn.ChannelShuffle(2)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        n = x.shape[0]
        x = self.shuffle(torch.relu(self.conv(x)))
        a, b = torch.split(x, [2, 6], dim=1)
        x = torch.cat([x[:, 5:], b[:, :1], a], 1).reshape(x.size(0), 2, 3, 4, 4).transpose(1, 2).contiguous()
        x = x.view(n, -1, 4, 4)[:, :5]  # a shuffle of the 6 channels, then 5 of them
        return self.fc(x.view(-1, 5 * 4 * 4))


def test_slices_splits_views_and_shuffles_written_by_hand_import():
    graph, _, err = from_torch(_Cut(), (3, 4, 4))
    assert err <= 1e-10
    kinds = [e.layer.type for e in graph.edges()]
    assert kinds.count("channel_shuffle") == 2 and kinds.count("channel_slice") == 5 and "flatten" in kinds


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [
    ("shufflenet_v2_x1_0", {}), ("shufflenet_v2_x1_5", {}), ("shufflenet_v2_x2_0", {}),
    ("resnet50", {"replace_stride_with_dilation": [False, True, True]}),  # dilation 2 and 4 in its last stages
])
def test_every_shufflenet_width_and_a_dilated_resnet_import(name, options):
    graph, _, err = from_torch(torchvision_net(name, num_classes=10, **options), (3, 32, 32))
    assert err <= 1e-10
    dilations = {e.layer.dilation for e in graph.edges() if isinstance(e.layer, Conv2d)}
    assert dilations == ({1, 2, 4} if options else {1})


def test_width_morphs_stop_at_a_channel_shuffle_and_widen_the_branches_between_exactly():
    """A channel shuffle (and a channel slice) moves channels by the width: the blobs it reads or
    writes, and everything tied or concatenated to them, are no widen or shrink site, and widen
    there says why; the branch convolutions' inner blobs widen exactly."""
    graph, weights, _ = from_torch(torchvision_net("shufflenet_v2_x0_5", num_classes=10), (3, 32, 32))
    weights = float64(weights)
    ends = {b for e in graph.edges() if e.layer.type in ("channel_shuffle", "channel_slice") for b in (e.src, e.dst)}
    sites = widen_sites(graph)
    assert sites and not ends & set(sites) and not ends & set(shrink_sites(graph))
    shuffled = next(e.dst for e in graph.edges() if e.layer.type == "channel_shuffle")
    with pytest.raises(MorphError, match=r"cannot widen .* a channel_(shuffle|slice) whose width cannot change"):
        apply_morph("widen", graph, weights, shuffled)
    for site in sites[::len(sites) // 4]:
        child = apply_morph("widen", graph, weights, site, seed=0)
        check = verify(graph, weights, child.graph, child.weights, dtype=torch.float64)
        assert check.max_rel_err <= 1e-10, (site, check)


def test_widen_refuses_blobs_tied_to_a_grouped_conv():
    """resnext's grouped 3x3 convs cannot be widened yet: their blobs are no widen site, and the others stay exact."""
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.ReLU(),
                        nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert_sensitive(net, (3, 8, 8))
    graph, weights, _ = from_torch(net, (3, 8, 8))
    sites = widen_sites(graph)
    assert "_1" not in sites and "_2" not in sites and "_3" not in sites
    for site in sites:
        child = apply_morph("widen", graph, float64(weights), site, seed=0)
        check = verify(graph, float64(weights), child.graph, child.weights, dtype=torch.float64)
        assert check.max_rel_err <= 1e-10, (site, check)


def test_cli_import_writes_a_checkpoint_that_arch_show_and_export_read(tmp_path):
    out = tmp_path / "r18"
    result = runner.invoke(app, ["import", "torchvision:resnet18", "--input", "3x32x32", "--classes", "10",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "imported torchvision:resnet18: 76 layers" in result.output
    arch, weights, metrics = load_checkpoint(out)
    assert metrics["imported_from"] == "torchvision:resnet18" and metrics["import_max_rel_err"] <= 1e-5
    assert weights["fc.weight"].shape == (10, 512)
    shown = runner.invoke(app, ["arch", "show", str(out / "arch.json"), "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.output)
    assert info["params"] == metrics["params"] == 11_181_642 and info["input_shape"] == [3, 32, 32]
    exported = runner.invoke(app, ["export", "--checkpoint", str(out), "--format", "python",
                                   "--out", str(tmp_path / "r18.py")])
    assert exported.exit_code == 0, exported.output


def test_cli_import_from_a_module_attribute(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n"
        "def small():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),\n"
        "                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3))\n"
        "INSTANCE = small()\n"
        "NOT_A_NET = 3\n"
    )
    monkeypatch.chdir(tmp_path)
    for attr in ("small", "INSTANCE"):
        result = runner.invoke(app, ["import", f"mynets:{attr}", "--input", "1x8x8", "--out", str(tmp_path / attr)])
        assert result.exit_code == 0, result.output
        assert (tmp_path / attr / "weights.safetensors").is_file()


@pytest.mark.parametrize("args, message", [
    (["mynets"], "must look like MODULE:ATTR or torchvision:NAME"),
    (["no_such_module_xyz:net"], "cannot import module 'no_such_module_xyz'"),
    (["torchvision:resnet9000"], "unknown torchvision classification model 'resnet9000'"),
    (["torchvision:convnext_tiny", "--input", "3x32x32"], "cannot import node 'permute' (.permute())"),
    (["torchvision:resnet18", "--input", "3xabc"], "--input must look like 3x32x32"),
])
def test_cli_import_errors_are_one_line_exit_2(tmp_path, args, message):
    result = runner.invoke(app, ["import", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out").exists()


def test_shrink_leaves_a_grouped_conv_alone():
    """Shrinking elsewhere used to rewrite every grouped conv as a depthwise one (resnext failed to compile)."""
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=4),
                        nn.ReLU(), nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(6, 3))
    graph, weights, _ = from_torch(net, (3, 8, 8))
    sites = shrink_sites(graph)
    assert sites == ["_5"]  # the blob the grouped conv reads or writes cannot shrink
    child = apply_morph("shrink", graph, weights, "_5", {"fraction": 0.5})
    assert child.graph.layer("_3") == graph.layer("_3")
    compile_graph(child.graph, child.weights)


REFERENCE_NETS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_1",
                  "shufflenet_v2_x0_5")
SITES_PER_MORPH = 6  # add_skip alone lists 9,379 site pairs in mobilenet_v3_small: the full product takes many minutes


@pytest.mark.slow
@pytest.mark.parametrize("name", REFERENCE_NETS)
def test_every_listed_site_of_every_morph_applies_and_the_exact_ones_verify(name):
    """A morph's sites are where it applies: for each registered morph, up to SITES_PER_MORPH of its
    listed sites (drawn with a fixed seed) apply to the imported network without an error, and an
    exact morph's child computes the network's outputs (float64, within 1e-10, or ten times the
    network's own rounding noise where that is larger: efficientnet_b0's is 1e-10 to 3e-9)."""
    graph, weights, _ = from_torch(torchvision_net(name, num_classes=10), (3, 32, 32))
    weights = float64(weights)
    calibration = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    refused, inexact = [], []
    for morph in sorted(MORPHS):
        sites = MORPHS[morph].sites(graph)
        for i in torch.randperm(len(sites), generator=gen)[:SITES_PER_MORPH].tolist():
            try:
                child = apply_morph(morph, graph, weights, sites[i], seed=i, calibration=calibration)
            except MorphnasError as err:
                refused.append(f"{morph} at {sites[i]!r}: {err}")
                continue
            if MORPHS[morph].exact:
                check = verify(graph, weights, child.graph, child.weights, dtype=torch.float64)
                if not child.exact or not check.preserved or check.tolerance > 1e-7:
                    inexact.append(f"{morph} at {sites[i]!r}: {check.max_rel_err:.2g} > {check.tolerance:.2g} "
                                   f"({child.note})")
    assert not refused and not inexact, (refused, inexact)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"])
def test_insert_pact_applies_after_every_grouped_and_depthwise_conv_exactly(name):
    """insert_pact lists every layer, depthwise convolutions included, and applies there exactly:
    one after every grouped convolution, one after another, then checked by the verifier."""
    graph, weights, _ = from_torch(torchvision_net(name, num_classes=10), (3, 32, 32))
    weights = float64(weights)
    grouped = [e.name for e in graph.edges() if isinstance(e.layer, Conv2d) and e.layer.groups > 1]
    assert grouped and set(grouped) <= set(MORPHS["insert_pact"].sites(graph))
    child_graph, child_weights = graph, weights
    for site in grouped:
        child = apply_morph("insert_pact", child_graph, child_weights, site)
        assert child.exact, site
        child_graph, child_weights = child.graph, child.weights
    check = verify(graph, weights, child_graph, child_weights, dtype=torch.float64)
    assert check.max_rel_err <= 1e-10, check


def test_cli_import_fits_grey_input_and_another_class_count_and_says_so(tmp_path):
    """--input 1x28x28 sums resnet18's RGB stem kernels (so a grey image computes what the original
    computes on that image in all three channels); --classes 10 gives it a fresh head."""
    grey = runner.invoke(app, ["import", "torchvision:resnet18", "--input", "1x28x28", "--out", str(tmp_path / "g")])
    assert grey.exit_code == 0, grey.output
    assert grey.output.splitlines()[0] == "grey input: conv1's RGB kernels summed into one channel"
    arch, weights, _ = load_checkpoint(tmp_path / "g")
    original = importer.build_module("torchvision:resnet18").module.eval()  # the same seed, 0
    assert_sensitive(original, (3, 28, 28))
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = compile_graph(ArchGraph.from_json(arch), weights).eval()(x)
        assert rel_err(got, original(x.expand(-1, 3, -1, -1))) <= 1e-5
    ten = runner.invoke(app, ["import", "torchvision:resnet18", "--input", "1x28x28", "--classes", "10",
                              "--out", str(tmp_path / "t")])
    assert ten.exit_code == 0, ten.output
    assert ten.output.splitlines()[1] == "10 classes: head fc (1000 outputs) replaced by a fresh one (seed 0)"
    arch, weights, _ = load_checkpoint(tmp_path / "t")
    assert arch["input_shape"] == [1, 28, 28] and weights["fc.weight"].shape == (10, 512)
    assert torch.equal(weights["conv1.weight"], original.conv1.weight.sum(1, keepdim=True))


def test_cli_import_json_prints_one_object_with_the_changes_as_notes(tmp_path):
    result = runner.invoke(app, ["import", "torchvision:shufflenet_v2_x0_5", "--input", "1x32x32", "--classes", "10",
                                 "--out", str(tmp_path / "s"), "--json"])
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 1
    info = json.loads(result.output)
    assert info["notes"] == ["grey input: conv1.0's RGB kernels summed into one channel",
                             "10 classes: head fc (1000 outputs) replaced by a fresh one (seed 0)"]
    assert info["layers"] == 226 and info["input_shape"] == [1, 32, 32] and info["checkpoint"] == str(tmp_path / "s")
    assert info["import_max_rel_err"] <= info["import_tolerance"] == 1e-10
    _, _, metrics = load_checkpoint(tmp_path / "s")
    assert {k: info[k] for k in metrics} == metrics and info["macs"] > 0


def test_a_torchvision_seed_fits_the_data_sets_channels_and_classes():
    graph, weights, notes = seed_network("torchvision:squeezenet1_1", (1, 32, 32), 7)  # its head is a 1x1 conv
    assert graph.input_shape == (1, 32, 32) and graph.shapes()[graph.sink] == (7,)
    assert weights["features_0.weight"].shape[1] == 1
    assert notes == ("grey input: features.0's RGB kernels summed into one channel",
                     "7 classes: head classifier.1 (1000 outputs) replaced by a fresh one (seed 0)")


def trained_resnet18(steps: int = 3) -> nn.Module:
    """A 10-class resnet18 after a few SGD steps on random 32x32 images (its batch norms' statistics move too)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
def test_cli_import_with_trained_weights_computes_what_the_trained_module_computes(tmp_path, suffix):
    net = trained_resnet18()
    assert_sensitive(net, (3, 32, 32))
    path = tmp_path / f"r18.{suffix}"
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, path) if suffix == "safetensors" else torch.save(state, path)
    result = runner.invoke(app, ["import", "torchvision:resnet18", "--weights", str(path), "--input", "3x32x32",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) == 1  # the head takes the file's 10 classes: nothing to adapt
    arch, weights, metrics = load_checkpoint(tmp_path / "out")
    assert metrics["imported_weights"] == str(path)
    model = compile_graph(ArchGraph.from_json(arch), float64(weights)).eval()
    reference = copy.deepcopy(net).double()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(model(x), reference(x)) <= 1e-10
    five = runner.invoke(app, ["import", "torchvision:resnet18", "--weights", str(path), "--input", "3x32x32",
                               "--classes", "5", "--out", str(tmp_path / "five")])
    assert five.exit_code == 0, five.output
    assert "5 classes: head fc (10 outputs) replaced by a fresh one (seed 0)" in five.output
    _, weights, _ = load_checkpoint(tmp_path / "five")
    assert weights["fc.weight"].shape == (5, 512) and torch.equal(weights["layer4_1_conv2.weight"],
                                                                  net.layer4[1].conv2.weight)


@pytest.mark.parametrize("content, message", [
    (b"not a weights file", "cannot read weights '{path}': not a safetensors or PyTorch state dict"),
    ("vgg", "weights '{path}' do not fit torchvision:resnet18: missing conv1.weight, bn1.weight, bn1.bias ..."),
    ("object", "cannot read weights '{path}': not a safetensors or PyTorch state dict"),  # weights_only refuses it
    (None, "cannot read weights '{path}': No such file or directory"),
])
def test_cli_import_refuses_bad_weights_in_one_line(tmp_path, content, message):
    path = tmp_path / "w.pt"
    if content == "vgg":
        torch.save(torchvision.models.vgg11(num_classes=2).state_dict(), path)
    elif content == "object":
        torch.save({"conv1.weight": tmp_path}, path)  # a pickled Path: code a state dict needs not run
    elif content is not None:
        path.write_bytes(content)
    result = runner.invoke(app, ["import", "torchvision:resnet18", "--weights", str(path), "--input", "3x32x32",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and message.format(path=path) in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_cli_import_refuses_input_channels_it_cannot_fold(tmp_path):
    result = runner.invoke(app, ["import", "torchvision:resnet18", "--input", "4x32x32", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("morphnas: error: torchvision:resnet18 takes 3-channel input: --input may have "
                                     "3 channels, or 1 (grey: its RGB kernels are summed)")


def test_rounding_noise_sets_the_tolerance_only_where_the_network_is_ill_conditioned():
    """The verifier's float64 tolerance is 1e-10 on a well-conditioned network; on efficientnet_b0
    (batch norms with running variances near 0) it rises to ten times the network's own rounding
    noise, which still exposes a weight that is off by one part in 10,000; float32's never rises."""
    resnet, resnet_weights, _ = from_torch(torchvision_net("resnet18"), (3, 32, 32))
    resnet_weights = float64(resnet_weights)
    check = verify(resnet, resnet_weights, resnet, resnet_weights, dtype=torch.float64)
    assert check.max_rel_err == 0 and check.noise < 1e-13 and check.tolerance == 1e-10

    graph, weights, _ = from_torch(torchvision_net("efficientnet_b0", num_classes=10), (3, 32, 32))
    weights = float64(weights)
    check = verify(graph, weights, graph, weights, dtype=torch.float64)
    assert 1e-10 < check.tolerance == 10 * check.noise < 1e-7
    conv = next(k for k in weights if k.endswith("weight") and weights[k].dim() == 4)
    wrong = {**weights, conv: weights[conv] * (1 + 1e-4)}
    off = verify(graph, weights, graph, wrong, dtype=torch.float64)
    assert off.max_rel_err > 100 * off.tolerance and not off.preserved
    single = verify(graph, weights, graph, weights, dtype=torch.float32)
    assert single.tolerance == 1e-5
