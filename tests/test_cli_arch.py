import json

from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.ir import ArchGraph

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
