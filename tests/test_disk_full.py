"""A full disk (a real, tiny tmpfs) while writing checkpoints: one line, nothing partial left, the study kept."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

from morphnas.cli import app
from morphnas.errors import CheckpointError
from morphnas.grammar.space import parse_space
from morphnas.search import SearchOptions, controller, load_study, open_storage, run_search
from morphnas.train import save_checkpoint

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


@pytest.fixture
def full_disk(tmp_path):
    """A 16 KiB file system: too small for any checkpoint's weights."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_a_checkpoint_error_and_leaves_nothing_behind(full_disk: Path):
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(full_disk / "ckpt", arch={"a": 1}, weights={"w": torch.zeros(100_000)}, metrics={})
    assert list(full_disk.iterdir()) == []


def test_a_search_whose_disk_is_full_stops_with_one_line_and_keeps_its_study(tmp_path, full_disk: Path):
    space = tmp_path / "tiny.json"
    space.write_text(json.dumps({"name": "tiny", "dataset": {"name": "digits"}, "rules": {"widen": {}},
                                 "seed": {"arch": "cnn", "epochs": 1, "batch_size": 64},
                                 "budget": {"generations": 1, "children": 2}}))
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    result = CliRunner().invoke(app, ["search", "--space", str(space), "--workdir", str(full_disk), "--storage",
                                      storage, "--study", "full"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]  # after the progress lines
    assert len(errors) == 1 and "No space left on device" in errors[0] and "free space and resume" in errors[0]
    assert "Traceback" not in result.output
    (seed,) = load_study(open_storage(storage), "full").get_trials()
    assert seed.state == TrialState.FAIL and "cannot write checkpoint" in seed.user_attrs["reason"]


def test_a_checkpoint_that_cannot_be_written_fails_its_child_alone_and_a_resume_redoes_it(tmp_path, full_disk,
                                                                                           monkeypatch):
    """Trial 1's checkpoint goes to the full tmpfs (a real ENOSPC); its sibling, trial 2, is still
    told, the search stops after the generation's rung, and the resume trains a child in its place."""
    def save(directory, **files):
        return save_checkpoint(full_disk / "ckpt" if directory.name == "00001" else directory, **files)

    space = parse_space({"name": "tiny", "dataset": {"name": "digits"}, "rules": {"widen": {}},
                         "seed": {"arch": "cnn", "epochs": 1, "batch_size": 64}, "final": None,
                         "finetune": {"epochs": 1, "batch_size": 64}, "budget": {"generations": 1, "children": 2}})
    options = SearchOptions(space=space, workdir=tmp_path / "w", study="s")
    monkeypatch.setattr(controller, "save_checkpoint", save)
    with pytest.raises(CheckpointError, match="No space left on device.*free space and resume"):
        run_search(options)
    study = load_study(open_storage(f"sqlite:///{tmp_path / 'w' / 'morphnas.db'}"), "s")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].user_attrs["reason"].startswith("CheckpointError: cannot write checkpoint")
    monkeypatch.undo()  # the disk has room again
    run_search(SearchOptions(space=space, workdir=tmp_path / "w", study="s", resume=True))
    trials = load_study(open_storage(f"sqlite:///{tmp_path / 'w' / 'morphnas.db'}"), "s").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]
    assert [t.user_attrs["generation"] for t in trials] == [0, 1, 1, 1]
