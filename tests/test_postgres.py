"""A search whose study lives on a real PostgreSQL server, through a plain ``postgresql://`` URL."""

import json

import pytest
from optuna.trial import TrialState
from postgres_server import PASSWORD, postgres_server
from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.search import load_study, open_storage

pytestmark = pytest.mark.slow

runner = CliRunner()


@pytest.fixture(scope="module")
def url():
    with postgres_server() as server:
        yield server


def test_search_studies_and_resume_on_postgresql_never_print_the_password(tmp_path, url):
    space = tmp_path / "tiny.yaml"
    space.write_text(json.dumps({
        "name": "tiny", "dataset": {"name": "digits"},
        "seed": {"arch": "cnn", "epochs": 1, "lr": 0.1, "batch_size": 64},
        "rules": {"widen": {"params": {"factor": [1.5, 2.0]}}},
        "finetune": {"epochs": 1, "batch_size": 64}, "final": {"epochs": 1, "batch_size": 64},
        "budget": {"generations": 1, "children": 2},
    }))
    args = ["search", "--space", str(space), "--storage", url, "--study", "pg", "--workdir", str(tmp_path)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert PASSWORD not in result.output and summary["storage"] == url.replace(PASSWORD, "***")
    trials = load_study(open_storage(url), "pg").get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)  # seed, 2 children, final
    listed = runner.invoke(app, ["studies", "list", "--storage", url])
    assert listed.exit_code == 0 and "pg" in listed.output and PASSWORD not in listed.output
    again = runner.invoke(app, [*args, "--resume"])  # a finished study: nothing more to do
    assert again.exit_code == 0, again.output
    assert len(load_study(open_storage(url), "pg").get_trials()) == 4 and PASSWORD not in again.output
