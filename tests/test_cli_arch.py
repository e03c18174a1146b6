import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

import morphnas.cli.arch
from morphnas.cli import app
from morphnas.ir import ArchGraph, arch_to_file, load_arch

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("morphnas ")


def test_arch_show_json_reports_table1_figures():
    result = runner.invoke(app, ["arch", "show", "resnet20", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["params"] == 269_722 and info["macs"] == 40_551_040
    assert abs(info["size_mb"] - 1.048) / 1.048 < 0.02


def test_arch_show_table_and_options():
    result = runner.invoke(app, ["arch", "show", "cnn", "--input", "1x28x28", "--classes", "7"])
    assert result.exit_code == 0, result.output
    assert "c3_conv" in result.output and "params 23,863" in result.output


def test_arch_save_then_show_file(tmp_path):
    out = tmp_path / "net.json"
    assert runner.invoke(app, ["arch", "save", "mlp", "--out", str(out), "--input", "1x8x8"]).exit_code == 0
    ArchGraph.loads(out.read_text())
    result = runner.invoke(app, ["arch", "show", str(out), "--json"])
    assert json.loads(result.output)["input_shape"] == [1, 8, 8]


LONG = "layer1_0_downsample_0_relu_after_the_projection"  # as torchvision's imports name their layers


@pytest.fixture
def long_names(tmp_path):
    """An architecture JSON whose layers have names longer than a narrow terminal's columns."""
    path = tmp_path / "long.json"
    arch_to_file(load_arch("mlp", (1, 8, 8), 10), path)
    path.write_text(path.read_text().replace('"fc1_relu"', f'"{LONG}"'))
    return path


def test_arch_show_never_cuts_a_layer_name_in_a_pipe_or_a_narrow_terminal(long_names, monkeypatch):
    piped = runner.invoke(app, ["arch", "show", str(long_names)])
    assert piped.exit_code == 0, piped.output
    row = next(line for line in piped.output.splitlines() if line.startswith(f"│ {LONG} "))
    assert [cell.strip() for cell in row.split("│")] == ["", LONG, "activation", "fc1", LONG, "256", ""]
    screen = io.StringIO()
    monkeypatch.setattr(morphnas.cli.arch, "console", lambda: Console(file=screen, width=50, force_terminal=True))
    assert runner.invoke(app, ["arch", "show", str(long_names)]).exit_code == 0
    assert LONG in screen.getvalue()  # the other columns fold instead


def test_a_checkpoint_directory_is_read_by_its_arch_json(tmp_path):
    checkpoint = tmp_path / "ckpt"
    saved = runner.invoke(app, ["arch", "save", "mlp", "--input", "1x8x8", "--out", str(checkpoint / "arch.json")])
    assert saved.exit_code == 0, saved.output  # the missing folder is made, as export makes it
    result = runner.invoke(app, ["arch", "show", str(checkpoint), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["input_shape"] == [1, 8, 8]
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["arch", "show", str(tmp_path / "empty")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"morphnas: error: {str(tmp_path / 'empty')!r} is a directory without an arch.json: not a checkpoint "
        "directory"]
    assert runner.invoke(app, ["arch", "save", "mlp", "--out", str(tmp_path / "ckpt" / "arch.json" / "x.json")
                               ]).output.startswith("morphnas: error: cannot write")


def test_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "morphnas.arch", "version": 1, "input_shape": [3, 4, 4], "blobs": [], ')
    for args in (["arch", "show", "resnet21"], ["arch", "show", str(bad)], ["arch", "show", "cnn", "--input", "3y4"],
                 ["arch", "show", str(tmp_path / "missing.json")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("morphnas: error:"), result.output


def test_arch_show_morphed_resnet_variant_table1():
    result = runner.invoke(app, ["arch", "show", "resnet20", "--morph", "1c1", "--shortcut", "B", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert abs(info["size_mb"] - 1.138) / 1.138 < 0.005 and abs(info["macs"] / 1e6 - 44.0) / 44.0 < 0.005
    bad = runner.invoke(app, ["arch", "show", "cnn", "--morph", "1c1"])
    assert bad.exit_code == 2 and "no identity shortcuts" in bad.output
