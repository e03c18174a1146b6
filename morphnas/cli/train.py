"""``morphnas train``: train one network on one data set and write a checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from morphnas.cli.options import AUGMENT_HELP, BATCH_SIZE, DATASETS, LR, AugmentKind, augment_kind
from morphnas.cli.output import console as make_console
from morphnas.errors import ConfigError

if TYPE_CHECKING:
    from morphnas.train import EpochReport


def check_out(out: Path) -> None:
    """ConfigError unless a checkpoint can be written to ``out``; checked before training so no result is lost.

    ``out`` may be missing or a checkpoint directory (replaced). Its parent directory is created
    and a temporary directory made and removed in it, as :func:`save_checkpoint` will do.
    """
    from morphnas.train.checkpoint import FILES

    target = out.absolute()
    replaceable = target.is_dir() and not target.is_symlink() and all(c.name in FILES for c in target.iterdir())
    if target.exists() and not replaceable:
        raise ConfigError(f"refusing to overwrite --out {out}: it exists and is not a checkpoint directory")
    ancestor = next(path for path in target.parents if path.exists())
    if not ancestor.is_dir():
        raise ConfigError(f"cannot write --out {out}: {ancestor} is a file, not a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(dir=target.parent).cleanup()
    except OSError as err:
        raise ConfigError(f"cannot write --out {out}: {err.strerror or err}") from None


@contextlib.contextmanager
def _progress(
    console: Console, title: str, total: int, enabled: bool
) -> Iterator[Callable[[EpochReport], None] | None]:
    """A rich progress bar advanced by the yielded ``on_epoch`` callback in a terminal, one plain
    line per epoch otherwise (logs, CI); None when disabled (``--json``)."""
    if not enabled:
        yield None
        return
    if not console.is_terminal:

        def log_epoch(report: EpochReport) -> None:
            typer.echo(f"{title}: epoch {report.epoch}/{total}  loss {report.train_loss:.3f}  "
                       f"val error {report.val_error:.2%}  ({report.seconds:.1f} s)")

        yield log_epoch
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(title, total=total, status="")

        def on_epoch(report: EpochReport) -> None:
            status = f"loss {report.train_loss:.3f}  val error {report.val_error:.2%}"
            progress.update(task, advance=1, status=status)

        yield on_epoch


def train_command(
    arch: str = typer.Option(..., "--arch", help="A seed name (resnet20, cnn, mlp, ...) or an architecture JSON file."),
    dataset: str = typer.Option("mnist5k", "--dataset", help=f"One of {', '.join(DATASETS)}."),
    augment: AugmentKind = typer.Option("default", "--augment", metavar="KIND", help=AUGMENT_HELP),
    data_root: Path | None = typer.Option(None, "--data-root",
                                          help="Where CIFAR or Fashion-MNIST lives (default ./data)."),
    download: bool = typer.Option(False, "--download", help="Fetch fashion-mnist into --data-root first."),
    epochs: float = typer.Option(10.0, "--epochs", help="Epochs to train (may be fractional)."),
    lr: float = typer.Option(LR, "--lr", help="Peak learning rate (cosine schedule)."),
    batch_size: int = typer.Option(BATCH_SIZE, "--batch-size", help="Batch size."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1,
        help="Seeds the initial weights, shuffling and augmentation."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write (replaced if it is one)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a summary."),
) -> None:
    """Train a network on a data set, write its checkpoint and report its errors."""
    # torch loads here, when a network trains, not for --help (tests/test_cli_startup_and_wheel.py)
    import torch

    from morphnas.ir import check_fits, compile_graph, load_arch
    from morphnas.train import TrainConfig, download_dataset, load_dataset, save_checkpoint, train

    check_out(out)
    if download:
        download_dataset(dataset, data_root)
    data = load_dataset(dataset, data_root=data_root, augment=augment_kind(augment))
    graph = load_arch(arch, input_shape=data.input_shape, num_classes=data.num_classes)
    check_fits(graph, data.input_shape, data.num_classes, dataset)
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    torch.manual_seed(seed)
    model = compile_graph(graph)
    params = sum(p.numel() for p in model.parameters())

    console = make_console()
    show_progress = not as_json
    with _progress(console, f"{arch} on {dataset}", math.ceil(epochs), show_progress) as on_epoch:
        result = train(model, data, config, on_epoch=on_epoch, evaluate_test=True)

    metrics = {
        "dataset": dataset,
        "augment": data.augment,
        "arch": arch,
        "params": params,
        "val_error": result.val_error,
        "test_error": result.test_error,
        "train_loss": result.train_loss,
        "epochs": result.epochs,
        "seconds": result.seconds,
        "config": dataclasses.asdict(config),
        "history": [dataclasses.asdict(report) for report in result.history],
        "normalisation": {"mean": list(data.mean), "std": list(data.std)},
    }
    path = save_checkpoint(out, arch=graph.to_json(), weights=dict(model.state_dict()), metrics=metrics)
    if as_json:
        summary = {key: metrics[key] for key in ("val_error", "test_error", "seconds", "epochs")}
        typer.echo(json.dumps({**summary, "out": str(path)}))
        return
    console.print(
        f"{arch} on {dataset}: val error {result.val_error:.2%}   test error "
        f"{metrics['test_error']:.2%}   {result.seconds:.1f} s   {params:,} params   -> {path}"
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
