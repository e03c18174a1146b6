"""``morphnas verify``: apply registered morphs at seeded sites and check that they preserve the function."""

from __future__ import annotations

import json
import time
import zlib
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from morphnas.cli.output import console as make_console
from morphnas.errors import ConfigError, MorphError

if TYPE_CHECKING:  # torch and the morphs load when the command runs, not for its --help
    import torch

    from morphnas.ir import ArchGraph, Weights

DTYPES = ("float32", "float64")


def check_morph(
    name: str, graph: ArchGraph, weights: Weights, seed: int, calibration: torch.Tensor, dtype: torch.dtype
) -> dict[str, Any] | None:
    """Apply morph ``name`` at a seeded site with its default params and verify it; None without a
    site. The row's ``tolerance`` is the verifier's (see :class:`~morphnas.morph.Verification`)."""
    import torch

    from morphnas.morph import apply_morph, get_morph, probe_inputs, verify

    spec = get_morph(name)
    sites = spec.sites(graph)
    if not sites:
        return None
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    site = sites[int(torch.randint(len(sites), (1,), generator=gen))]
    params = spec.default_params(graph, site, gen)
    start = time.perf_counter()
    res = apply_morph(name, graph, weights, site, params, seed=seed, calibration=calibration)
    ms = (time.perf_counter() - start) * 1e3
    probes = probe_inputs(graph.input_shape, dtype, seed)
    check = verify(graph, weights, res.graph, res.weights, dtype=dtype, inputs=probes)
    return {
        "morph": name,
        "site": site,
        "exact": res.exact,
        "max_rel_err": check.max_rel_err,
        "train_max_rel_err": check.train_max_rel_err,
        "tolerance": check.tolerance,
        "ms": ms,
    }


def _print_table(rows: list[dict[str, Any]], title: str, skipped: list[str]) -> None:
    table = Table(title=title)
    for column in ("morph", "site", "exact", "max rel err (eval)", "train-mode err", "ms"):
        table.add_column(column, justify="right" if column == "ms" else "left", no_wrap=True)
    for r in rows:
        bad = _failed(r)
        err = f"[red]{r['max_rel_err']:.2e}[/red]" if bad else f"{r['max_rel_err']:.2e}"
        table.add_row(r["morph"], r["site"], "yes" if r["exact"] else "no", err, f"{r['train_max_rel_err']:.2e}",
                      f"{r['ms']:.1f}")
    console = make_console()
    console.print(table)
    if skipped:
        console.print(f"no site for: {', '.join(skipped)}")


def verify_command(
    arch: str = typer.Option(..., "--arch", help="A seed name (resnet20, cnn, mlp, ...) or an architecture JSON file."),
    morph: str = typer.Option("all", "--morph", help="A registered morph, or 'all'."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1,
        help="Seeds the weights, the sites, the morphs and the probes."),
    input: str = typer.Option("3x32x32", "--input", help="Input shape C x H x W (seeds only)."),
    classes: int = typer.Option(10, "--classes", min=1, help="Number of classes (seeds only)."),
    shortcut: str = typer.Option("A", "--shortcut", help="ResNet shortcut: A (parameter-free) or B (projection)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per morph."),
) -> None:
    """Apply each morph at a seeded site of a randomly weighted network and check function preservation.

    The network's batch norms take the statistics of a train-mode pass over a random batch, as a
    trained network's; a network whose outputs then barely depend on its input is refused (any
    morph of it would pass). Exit status 1 when a morph that claims exactness exceeds the
    tolerance (1e-5 in float32, 1e-10 in float64, or in float64 ten times an ill-conditioned
    network's own rounding noise); approximate morphs are reported, never failed.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be float32 or float64, got {dtype!r}")
    import torch

    from morphnas.cli.arch import resolve
    from morphnas.ir import compile_graph, init_weights
    from morphnas.morph import MORPHS, SENSITIVITY_FLOOR, get_morph, sensitivity, trained_like

    names = sorted(MORPHS) if morph == "all" else [get_morph(morph).name]
    graph = resolve(arch, input, classes, shortcut)
    torch_dtype = getattr(torch, dtype)
    calibration = torch.randn(16, *graph.input_shape, generator=torch.Generator().manual_seed(seed)).to(torch_dtype)
    weights = trained_like(graph, init_weights(graph, seed), calibration, seed)
    change = sensitivity(compile_graph(graph, weights).eval(), graph.input_shape, torch_dtype, seed)
    if change <= SENSITIVITY_FLOOR:
        raise ConfigError(f"{arch!r}: its outputs barely depend on its input (relative change {change:.2g} between "
                          f"two random batches, floor {SENSITIVITY_FLOOR:g}), so any morph of it would verify")
    rows, skipped = [], []
    for name in names:
        row = check_morph(name, graph, weights, seed, calibration, torch_dtype)
        if row is None:
            skipped.append(name)
        else:
            rows.append(row)
    if morph != "all" and not rows:
        raise MorphError(f"morph {morph!r} has no site in {arch!r}")
    if as_json:
        typer.echo(json.dumps(rows))
    else:
        _print_table(rows, f"{arch} ({dtype}, seed {seed})", skipped)
    if any(_failed(r) for r in rows):
        raise typer.Exit(1)


def _failed(row: dict[str, Any]) -> bool:
    """A morph that claims exactness and exceeds the verifier's tolerance."""
    return row["exact"] and row["max_rel_err"] > row["tolerance"]


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_command)
