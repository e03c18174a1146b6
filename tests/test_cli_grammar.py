import json

from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.modules import MODULES, module_to_json

runner = CliRunner()


def test_classify_paper_modules():
    for name, kind in zip("ABCD", ["simple", "simple", "simple", "complex"], strict=True):
        result = runner.invoke(app, ["grammar", "classify", name, "--json"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["class"] == kind
        assert (len(out["sequence"]) == MODULES[name].number_of_edges() - 1) == (kind == "simple")
    assert "irreducible core" in runner.invoke(app, ["grammar", "classify", "D"]).output


def test_classify_file_and_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(module_to_json(MODULES["C"])))
    assert "simple morphable" in runner.invoke(app, ["grammar", "classify", str(path)]).output
    bad = tmp_path / "bad.json"
    bad.write_text('{"source": "s", "sink": "t", "edges": [{"name": "F", "src": "t", "dst": "s", "kernel": 2}]}')
    for target in (str(bad), str(tmp_path / "missing.json")):
        result = runner.invoke(app, ["grammar", "classify", target])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output


def test_rules_as_json_list_every_rule_with_its_morph_and_params():
    from morphnas.grammar.rules import RULES

    out = json.loads(runner.invoke(app, ["grammar", "rules", "--json"]).output)
    assert [r["name"] for r in out["rules"]] == list(RULES)
    widen = next(r for r in out["rules"] if r["name"] == "widen")
    assert widen["morph"] == RULES["widen"].morph and widen["params"] == sorted(RULES["widen"].params)
