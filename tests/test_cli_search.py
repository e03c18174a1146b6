"""``morphnas search`` in a pipe: plain lines that never wrap, and a summary that says what its
seed figure is (the seed after its seed phase, not a baseline with the whole budget)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from morphnas.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()
SPACE = {
    "name": "tiny",
    "dataset": {"name": "digits"},
    "seed": {"arch": "mlp", "epochs": 1, "lr": 0.1, "batch_size": 64},
    "rules": {"widen": {"params": {"factor": [1.5]}}},
    "finetune": {"epochs": {"low": 1, "high": 1, "int": True}, "batch_size": 64},
    "final": {"lr": 0.02, "epochs": 1, "batch_size": 64},
    "budget": {"generations": 1, "children": 1},
}


def test_a_piped_search_summary_names_the_seed_phase_and_never_wraps(tmp_path):
    space = tmp_path / "a space with a name long enough to wrap at eighty columns in a pipe.json"
    space.write_text(json.dumps(SPACE))
    result = runner.invoke(app, ["search", "--space", str(space), "--workdir", str(tmp_path), "--study",
                                 "a-study-name-that-makes-the-summary-lines-longer-than-eighty-columns"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "generation 1: 1 child" in lines
    summary = lines[lines.index(next(line for line in lines if line.startswith("best trial"))):]
    assert summary[0].startswith("best trial ") and summary[0].endswith(
        "of study a-study-name-that-makes-the-summary-lines-longer-than-eighty-columns (3 trials, 0 failed)")
    test_line = next(line for line in summary if line.startswith("test error "))
    assert test_line.endswith("(2 steps from the seed network)"), test_line  # seed -> child -> final
    seed_line = next(line for line in summary if line.startswith("  the seed network after its seed phase (1 epoch, "))
    assert "test error " in seed_line and "validation error " in seed_line
    assert not any("better" in line or "worse" in line for line in summary)
    assert all(line.startswith(("best trial", "  ", "test error")) for line in summary), summary  # none wrapped
