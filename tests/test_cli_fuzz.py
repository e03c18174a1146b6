"""Random argument vectors thrown at ``morphnas search/train/export/arch show``: never a traceback.

Every vector ends in a clean exit: 0 (it ran), 1 (a check the user asked for failed) or 2 (a
user error, said in one ``morphnas: error:`` line or a one-line usage message). The words are
drawn from each command's flags and from values good and bad (wrong types, out of range, names
that do not exist, a binary file, a file where a directory belongs), in any order and number.
Searches get a budget of seconds on ``digits`` first, so one that is valid ends quickly; a later
flag of the vector may still override it with another drawn value.
"""

from __future__ import annotations

import shlex

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.ir import init_weights, mlp
from morphnas.train import save_checkpoint

pytestmark = pytest.mark.slow

runner = CliRunner()

COMMON = ["--help", "--bogus", "--json", "", "-", "--", "x", "--=1"]
FLAGS: dict[str, dict[str, list[str]]] = {
    "search": {
        "--space": ["default", "nope", "{binary}", "{dir}", "{file}"],
        "--dataset": ["digits", "nope", "npz:{file}", "npz:/nonexistent.npz", "imagefolder:{dir}"],
        "--generations": ["1", "0", "-1", "abc", "1e9"],
        "--children": ["1", "0", "x"],
        "--epochs": ["0.2", "0", "-1", "nan", "inf"],
        "--seed-epochs": ["0.2", "0", "x"],
        "--time-budget": ["2s", "0", "-5s", "1h5", "abc"],
        "--objectives": ["error", "error,macs", "macs", "error,error", ""],
        "--executor": ["local", "bogus", ""],
        "--gpus-per-child": ["0", "0.25", "-1"],
        "--cpus-per-child": ["1", "0", "x"],
        "--study": ["s", "", "../up", "a/b"],
        "--workdir": ["{dir}/w", "{file}", "/proc/nope"],
        "--storage": ["sqlite:///{dir}/s.db", "nope://x", "postgresql://u:secret@127.0.0.1:1/db"],
        "--seed": ["0", "-1", "x"],
        "--resume": [],
    },
    "train": {
        "--arch": ["mlp", "cnn", "nope", "{binary}"],
        "--dataset": ["digits", "nope", "npz:{file}"],
        "--epochs": ["0.1", "0", "-1", "x"],
        "--lr": ["0.1", "-1", "x", "nan"],
        "--batch-size": ["64", "0", "x"],
        "--seed": ["1", "x"],
        "--out": ["{dir}/t", "{file}/t", "/proc/t"],
        "--augment": ["default", "none", "affine", "nope", ""],
    },
    "export": {
        "--trial": ["best", "0", "99", "x", "-1"],
        "--format": ["onnx", "python", "bundle", "program", "nope", ""],
        "--out": ["{dir}/e.onnx", "{file}/e", "/proc/e.onnx"],
        "--checkpoint": ["{ckpt}", "{dir}", "{file}", "/nonexistent"],
        "--workdir": ["{dir}", "{file}"],
        "--storage": ["nope://", "sqlite:///{dir}/none.db"],
        "--no-preprocess": [], "--preprocess": [],
    },
    "arch": {
        "mlp": [], "resnet20": [], "nope": [], "{binary}": [], "{ckpt}/arch.json": [],
        "--input": ["1x8x8", "3x32x32", "0x1x1", "axb", "1x8"],
        "--classes": ["10", "0", "-2", "x"],
        "--shortcut": ["A", "B", "C"],
        "--morph": ["widen", "nope", "widen:factor=9", ""],
        "--json": [],
    },
}


def words(command: str) -> st.SearchStrategy[list[str]]:
    """One flag of ``command`` with one of its values (or alone), or a stray word."""
    flags = FLAGS[command]
    flag = st.sampled_from(sorted(flags)).flatmap(
        lambda f: st.sampled_from(flags[f]).map(lambda v, f=f: [f, v]) if flags[f] else st.just([f]))
    return st.one_of(flag, st.sampled_from(COMMON).map(lambda w: [w]))


def argv(command: str) -> st.SearchStrategy[list[str]]:
    return st.lists(words(command), max_size=5).map(lambda parts: [w for part in parts for w in part])


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "dir").mkdir()
    (root / "file").write_text("not a directory\n")
    (root / "binary").write_bytes(bytes(range(256)) * 4)
    graph = mlp((1, 8, 8), num_classes=10)
    save_checkpoint(root / "ckpt", arch=graph.to_json(), weights=init_weights(graph, seed=0), metrics={})
    return {"dir": str(root / "dir"), "file": str(root / "file"), "binary": str(root / "binary"),
            "ckpt": str(root / "ckpt")}


def run(command: str, args: list[str], places: dict[str, str]):
    args = [a.format(**places) for a in args]
    if command == "search":  # seconds on digits unless the vector says otherwise
        args = ["--dataset", "digits", "--time-budget", "2s", "--seed-epochs", "0.2", "--workdir",
                places["dir"] + "/w", "--generations", "1", "--children", "1", *args]
    full = [command, *args] if command != "arch" else ["arch", "show", *args]
    result = runner.invoke(app, full)
    shown = f"morphnas {shlex.join(full)}\n{result.output}"
    event(f"exit {result.exit_code}")
    assert result.exit_code in (0, 1, 2), shown
    assert "Traceback" not in result.output, shown
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), shown
    if result.exit_code == 2 and not result.output.lstrip().startswith("Usage:"):  # not a group's help
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "error" in lines[0].lower(), shown


FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(args=argv("search"))
def test_search_never_gives_a_traceback(args, places):
    run("search", args, places)


@FUZZ
@given(args=argv("train"))
def test_train_never_gives_a_traceback(args, places):
    run("train", args, places)


@FUZZ
@given(args=argv("export"))
def test_export_never_gives_a_traceback(args, places):
    run("export", args, places)


@FUZZ
@given(args=argv("arch"))
def test_arch_never_gives_a_traceback(args, places):
    run("arch", args, places)
