"""TrialRecord reads a study written before it existed; the study's readers and the CLI read through it.

``fixtures/study_v1.db`` is a real SQLite study written by the code at commit 7aa91e0 (before
TrialRecord and the ``trial_schema`` attribute): a search on sklearn digits, seed 3, the cnn
seed, two generations of two children with successive halving (eta 2, so each generation has a
child halved out) and the final phase. Its checkpoints are not kept (the report says it cannot
draw the architecture).
"""

import dataclasses
import json
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.errors import StudyError
from morphnas.report import build_report
from morphnas.search.record import ATTRIBUTES, FIELDS, SCHEMA_KEY, TRIAL_SCHEMA, TrialRecord, record_on, trial_schema
from morphnas.search.study import COLUMNS, best_trial, lineage, load_study, open_storage, trials_frame

FIXTURE = Path(__file__).parent / "fixtures" / "study_v1.db"
runner = CliRunner()


@pytest.fixture
def url(tmp_path) -> str:
    """The fixture study, copied (reading must not change it), its work directory (where it was
    made) pointed at an empty one."""
    shutil.copy(FIXTURE, tmp_path / "morphnas.db")
    url = f"sqlite:///{tmp_path / 'morphnas.db'}"
    optuna.load_study(study_name="v1", storage=url).set_user_attr("workdir", str(tmp_path / "runs"))
    return url


def test_every_trial_of_a_study_of_the_previous_format_reads_through_the_record(url):
    study = load_study(open_storage(url), "v1")
    assert SCHEMA_KEY not in study.user_attrs and trial_schema(study) == 1
    records = [TrialRecord.from_trial(t) for t in study.trials]
    assert [r.state for r in records] == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    for trial, record in zip(study.trials, records, strict=True):
        assert set(trial.user_attrs) <= set(ATTRIBUTES)  # every key the old format wrote is a field
        assert record.to_attrs(*trial.user_attrs) == trial.user_attrs  # and reads back as written
        assert record.number == trial.number and record.checkpoint == f"studies/v1/trials/{trial.number:05d}"
        assert record.rung is not None and len(record.history) >= 1 and record.duration_s > 0
    seed, halved, *_, final = records
    assert (seed.generation, seed.parent, seed.rule, seed.morphs) == (0, None, "seed", [])
    assert halved.reason.startswith("halved out after rung 1") and halved.val_error == halved.history[-1]
    assert halved.descriptor["rule"] == halved.rule and halved.morph_text.startswith(halved.rule)
    assert halved.exact is True and halved.preservation_error < 1e-4 and halved.inherit is True
    assert (final.rule, final.parent, final.generation) == ("final", 3, 3)
    assert [t.number for t in lineage(study, best_trial(study).number)] == [0, 2, 3, 5]


def test_the_trials_frame_has_one_column_per_field_from_the_record(url):
    study = load_study(open_storage(url), "v1")
    frame = trials_frame(study)
    assert list(frame.columns) == COLUMNS == [*FIELDS, "test_error"]
    for trial, row in zip(study.trials, frame.to_dict("records"), strict=True):
        record = dataclasses.asdict(TrialRecord.from_trial(trial))
        assert {k: v for k, v in row.items() if k in FIELDS and record[k] is not None} == \
            {k: v for k, v in record.items() if v is not None}
    assert frame["test_error"].notna().tolist() == [True, False, False, False, False, True]


def test_studies_show_json_and_the_report_read_the_old_study(url, tmp_path):
    shown = runner.invoke(app, ["studies", "show", "v1", "--storage", url, "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.output)
    study = load_study(open_storage(url), "v1")
    assert info["best_trial"] == 5 and [r["number"] for r in info["trials"]] == list(range(6))
    for trial, row in zip(study.trials, info["trials"], strict=True):
        assert set(row) == {*FIELDS, "test_error", "pareto"}
        record = TrialRecord.from_trial(trial)
        assert row["morphs"] == record.morphs and row["history"] == record.history
        assert (row["parent"], row["rule"], row["val_error"], row["reason"]) == (
            record.parent, record.rule, record.val_error, record.reason)
    table = runner.invoke(app, ["studies", "show", "v1", "--storage", url])
    assert table.exit_code == 0 and TrialRecord.from_trial(study.trials[1]).morph_text in table.output
    chain = json.loads(runner.invoke(app, ["studies", "lineage", "v1", "--storage", url, "--json"]).output)
    assert [s["trial"] for s in chain["lineage"]] == [0, 2, 3, 5] and chain["lineage"][1]["morphs"]
    page = build_report(study, tmp_path / "report.html").read_text()
    assert "best trial</dt><dd>5 (generation 3)" in page and "Cannot draw the architecture" in page


def test_a_study_of_a_newer_format_is_refused_in_one_line(url):
    study = load_study(open_storage(url), "v1")
    study.set_user_attr(SCHEMA_KEY, TRIAL_SCHEMA + 1)
    with pytest.raises(StudyError, match=f"written with trial format {TRIAL_SCHEMA + 1}"):
        load_study(open_storage(url), "v1")
    shown = runner.invoke(app, ["studies", "show", "v1", "--storage", url])
    assert shown.exit_code != 0 and "upgrade morphnas" in shown.output and "Traceback" not in shown.output


def test_record_on_writes_the_fields_given_in_order_and_nothing_else():
    study = optuna.create_study()
    trial = study.ask()
    record_on(trial, generation=1, parent=0, rung=2)
    assert list(trial.user_attrs) == ["generation", "parent", "rung"]
    with pytest.raises(TypeError):
        record_on(trial, val_eror=0.1)  # a misspelt field never reaches the study
    with pytest.raises(ValueError, match="not trial attributes: state"):
        record_on(trial, state="COMPLETE")  # read from the trial, never written
    study.tell(trial, 0.2)
    assert TrialRecord.from_trial(study.trials[0]).val_error == 0.2


def test_a_fail_trial_without_a_reason_reads_as_interrupted():
    record = TrialRecord.from_trial(create_trial(state=TrialState.FAIL, user_attrs={"generation": 1}))
    assert record.reason.startswith("interrupted") and record.val_error is None and record.morph_text is None
