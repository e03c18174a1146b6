"""The CLI starts without torch, says usage errors in one line, counts MACs as torch does, and its
wheel carries the search spaces."""

import importlib
import pkgutil
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import typer
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

import morphnas.cli
from morphnas.cli import COMMANDS, app, load_command
from morphnas.grammar.space import SPACES_DIR
from morphnas.ir import ArchGraph, Conv2d, GlobalAvgPool, Linear, compile_graph, count_macs, init_weights, load_arch
from morphnas.morph import MORPHS, apply_morph, get_morph

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

_MODULES_AFTER = """
import sys
from morphnas.cli import app
try:
    app({args!r}, prog_name="morphnas")
except SystemExit as end:
    assert end.code in (0, None), end.code
print("imported:", *sorted(m for m in ("torch", "optuna", "pandas") if m in sys.modules))
"""


def _imported_by(args: list[str]) -> set[str]:
    """The heavy modules a fresh interpreter has imported after ``morphnas ARGS``."""
    done = subprocess.run([sys.executable, "-c", _MODULES_AFTER.format(args=args)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    last = done.stdout.splitlines()[-1].split()
    assert last[0] == "imported:", done.stdout
    return set(last[1:])


def test_help_imports_neither_torch_nor_optuna():
    assert _imported_by(["--help"]) == set()


@pytest.mark.parametrize("command", [
    *([name] for name in COMMANDS),
    ["arch", "show"], ["arch", "save"], ["grammar", "classify"], ["grammar", "rules"],
    ["studies", "list"], ["studies", "show"], ["studies", "lineage"], ["studies", "delete"],
])
def test_a_command_help_imports_no_torch(command):
    """Every command loads torch when it runs, not to print its help; nor optuna, but for the commands that
    read studies (report, dashboard, studies), whose module is built on it."""
    imported = _imported_by([*command, "--help"])
    assert "torch" not in imported
    if command[0] not in ("report", "dashboard", "studies"):
        assert imported == set()


def test_the_names_and_defaults_the_help_shows_are_the_library_s():
    """morphnas.cli.options keeps, without torch, what the commands' help lists and defaults to."""
    from morphnas.cli import options
    from morphnas.export import FORMATS
    from morphnas.morphnet import DEFAULT_STRENGTH, DEFAULT_THRESHOLD, TARGETS
    from morphnas.train import AUGMENTS, DATASETS, TrainConfig

    assert options.DATASETS == DATASETS and options.AUGMENTS == AUGMENTS
    assert (options.LR, options.BATCH_SIZE) == (TrainConfig.lr, TrainConfig.batch_size)
    assert options.FORMATS == tuple(FORMATS) and options.TARGETS == TARGETS
    assert (options.DEFAULT_STRENGTH, options.DEFAULT_THRESHOLD) == (DEFAULT_STRENGTH, DEFAULT_THRESHOLD)


def test_studies_list_imports_no_torch(tmp_path):
    import optuna

    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'morphnas.db'}")
    assert "torch" not in _imported_by(["studies", "list", "--workdir", str(tmp_path)])


def test_the_command_table_matches_the_command_modules():
    """COMMANDS lists what registering every command module of morphnas.cli builds (the modules with
    a ``register``; the others, options, output and progress, are the commands' helpers), in the same order and
    with the same help, so the lazy ``morphnas --help`` shows what the commands say of themselves."""
    eager = typer.Typer()
    modules = [importlib.import_module(f"morphnas.cli.{info.name}")
               for info in sorted(pkgutil.iter_modules(morphnas.cli.__path__), key=lambda i: i.name)]
    helpers = [m.__name__ for m in modules if not hasattr(m, "register")]
    assert helpers == ["morphnas.cli.options", "morphnas.cli.output", "morphnas.cli.progress"]
    for module in modules:
        if hasattr(module, "register"):
            module.register(eager)
    commands = typer.main.get_group(eager).commands
    assert list(COMMANDS) == list(commands)
    for name, (_, text) in COMMANDS.items():
        assert " ".join(commands[name].help.split("\n\n")[0].split()) == text, name
        assert load_command(name).name == name


@pytest.mark.parametrize("args", [
    ["--bogus"],
    ["serch"],
    ["search", "--generations", "-1"],
    ["search", "--children", "abc"],
    ["dashboard", "--port", "80000"],
    ["studies", "list", "--bogus"],
])
def test_usage_errors_are_one_line_exit_2(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("morphnas: error: "), result.output


def test_no_arguments_still_print_the_help():
    result = runner.invoke(app, [])
    assert result.exit_code == 2 and "Commands" in result.output and "studies" in result.output


def _flop_counter_macs(graph: ArchGraph) -> int:
    module = compile_graph(graph).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.zeros(1, *graph.input_shape))
    return counter.get_total_flops() // 2


def _grouped_concat() -> ArchGraph:
    """A strided, padded, grouped conv beside a plain one, concatenated, then pooled into a linear."""
    graph = ArchGraph((4, 9, 9))
    for blob, merge in (("x", "add"), ("y", "concat"), ("p", "add"), ("out", "add")):
        graph.add_blob(blob, merge)
    graph.add_layer("grouped", "x", "y", Conv2d(4, 6, 3, stride=2, padding=1, groups=2))
    graph.add_layer("plain", "x", "y", Conv2d(4, 3, 3, stride=2, padding=1, bias=False))
    graph.add_layer("pool", "y", "p", GlobalAvgPool())
    graph.add_layer("fc", "p", "out", Linear(9, 5, bias=False))
    return graph.validate()


def test_macs_match_torchs_flop_counter_on_seeds_and_morphs():
    graphs = [_grouped_concat()]
    for name in ("cnn", "mlp", "resnet20"):
        graph = load_arch(name, (3, 16, 16), 10)
        weights = init_weights(graph)
        graphs.append(graph)
        for morph in sorted(MORPHS):
            sites = get_morph(morph).sites(graph)
            if sites:
                params = get_morph(morph).default_params(graph, sites[-1], torch.Generator().manual_seed(0))
                graphs.append(apply_morph(morph, graph, weights, sites[-1], params).graph)
    assert len(graphs) > 30
    for graph in graphs:
        assert count_macs(graph) == _flop_counter_macs(graph)


def test_wheel_carries_the_search_spaces(tmp_path):
    source = tmp_path / "source"  # a copy: building in place would leave build/ in the work tree
    for name in ("morphnas", "search_spaces"):
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("morphnas-*.whl")
    spaces = sorted((ROOT / "search_spaces").glob("*.yaml"))
    assert spaces and SPACES_DIR.resolve() == (ROOT / "search_spaces").resolve()
    with zipfile.ZipFile(wheel) as archive:
        for space in spaces:
            assert archive.read(f"morphnas/search_spaces/{space.name}") == space.read_bytes()
