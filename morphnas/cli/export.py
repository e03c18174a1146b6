"""``morphnas export``: write a study's trial (or a checkpoint directory) as ONNX, .pt2, a bundle or source."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from morphnas.cli.options import FORMATS
from morphnas.errors import ConfigError, StudyError

if TYPE_CHECKING:
    from morphnas.ir import ArchGraph, Weights

_LOADING = {
    "onnx": "run it with onnxruntime (input 'input', dynamic batch)",
    "pt2": "load it with torch.export.load(path).module() (it unpickles: only files you trust)",
    "safetensors": "load it with morphnas.load(path)",
    "python": "import it and call load() (needs only torch and safetensors)",
}


def parse_trial(text: str) -> int | None:
    """``"best"`` -> None, ``"7"`` -> 7; anything else raises ConfigError."""
    if text.strip().lower() == "best":
        return None
    try:
        number = int(text)
    except ValueError:
        raise ConfigError(f"--trial must be a trial number or 'best', got {text!r}") from None
    if number < 0:
        raise ConfigError(f"--trial must be a trial number or 'best', got {text!r}")
    return number


def _from_study(
    study_name: str, trial_text: str, storage: str | None, workdir: Path
) -> tuple[ArchGraph, Weights, dict[str, Any], str]:
    from morphnas.ir import ArchGraph
    from morphnas.search.study import (
        default_storage,
        find_trial,
        load_study,
        open_storage,
        test_error,
        trial_checkpoint,
    )
    from morphnas.train.checkpoint import load_checkpoint

    if storage is None:
        database = Path(workdir).resolve() / "morphnas.db"
        if not database.is_file():
            raise StudyError(f"no study database at {database} (pass --workdir or --storage)")
        storage = default_storage(workdir)
    study = load_study(open_storage(storage), study_name)
    trial = find_trial(study, parse_trial(trial_text))
    arch, weights, metrics = load_checkpoint(trial_checkpoint(study, trial))
    tested = test_error(study, trial.number)
    if tested is not None:
        metrics = {**metrics, "test_error": tested}
    return ArchGraph.from_json(arch), weights, metrics, f"trial {trial.number} of study {study_name!r}"


def export_command(
    study: str = typer.Argument(None, help="Study name (or pass --checkpoint instead)."),
    trial: str = typer.Option("best", "--trial", help="Trial number, or 'best' (lowest validation error)."),
    fmt: str = typer.Option(
        None, "--format", help=f"One of {', '.join(FORMATS)} (default: from the --out suffix; none = safetensors)."
    ),
    out: Path = typer.Option(..., "--out", help="Output file (.onnx, .pt2, .py) or bundle directory."),
    storage: str = typer.Option(None, "--storage", help="SQLAlchemy URL (default: sqlite in the work dir)."),
    workdir: Path = typer.Option(Path("runs"), "--workdir", help="Work directory of the search."),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="Export this checkpoint (or bundle) directory instead of a study."
    ),
    preprocess: bool = typer.Option(
        True, "--preprocess/--no-preprocess",
        help="Put the training data's normalisation into the network, so it takes raw pixels in [0, 1].",
    ),
) -> None:
    """Export the best (or a chosen) morphed network and check it reproduces PyTorch's outputs.

    Exits 1 when the export differs from PyTorch beyond tolerance, 2 on a user error (bad flag, unknown study or
    trial, failed trial, unwritable output).
    """
    # torch and optuna load here, when a network is exported, not for --help (tests/test_cli_startup_and_wheel.py)
    from morphnas.export import ExportMismatchError, export, infer_format, read_bundle

    if (study is None) == (checkpoint is None):
        raise ConfigError("pass either a STUDY name or --checkpoint DIR (exactly one)")
    fmt = fmt or infer_format(out)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; formats: {', '.join(FORMATS)}")
    if checkpoint is not None:
        graph, weights, metrics = read_bundle(checkpoint)
        what = f"checkpoint {checkpoint}"
    else:
        graph, weights, metrics, what = _from_study(study, trial, storage, workdir)
    stats = (metrics or {}).get("normalisation")
    normalisation = (stats["mean"], stats["std"]) if preprocess and stats and "input" not in metrics else None
    try:
        diff = export(graph, weights, out, fmt, metrics=metrics, normalisation=normalisation)
    except ExportMismatchError as err:
        typer.echo(f"morphnas: error: {err}", err=True)
        raise typer.Exit(1) from None
    extra = f" and {out.with_suffix('.safetensors')}" if fmt == "python" else ""
    typer.echo(f"exported {what} as {fmt} to {out}{extra} (max abs diff from PyTorch {diff:.2g}); {_LOADING[fmt]}")
    if normalisation is not None:
        typer.echo("it takes raw pixels in [0, 1]: its first layer (input_norm) applies the training normalisation")
    else:
        typer.echo("it takes inputs normalised as in training" + ("" if stats else " (this checkpoint does not "
                   "record the normalisation: see the data set's mean and std)"))


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
