"""Median latency of each registered morph on ResNet-56 (CIFAR shape, CPU).

For each morph, ``--sites`` seeded sites (default parameters) are each morphed ``--repeats``
times; the table shows the median and the fastest over all runs, without calibration (new BNs
get statistics 0/1) and with a calibration batch of ``--calibration`` images (one forward pass
of the child per morph that adds a BN). "sites" is how many sites the morph has on ResNet-56;
apply_morph checks the site against that list, so its cost is part of the latency. Times are
milliseconds of wall time; the machine may be shared, so compare the fastest column too.

    .venv/bin/python benchmarks/morph_latency.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from morphnas.ir import init_weights, resnet
from morphnas.morph import MORPHS, apply_morph


def timings(name: str, graph, weights, calibration, sites: int, repeats: int) -> list[float]:
    """Milliseconds of ``apply_morph`` at ``sites`` seeded sites, ``repeats`` times each."""
    spec = MORPHS[name]
    gen = torch.Generator().manual_seed(0)
    candidates = spec.sites(graph)
    out = []
    for _ in range(sites):
        site = candidates[int(torch.randint(len(candidates), (1,), generator=gen))]
        params = spec.default_params(graph, site, gen)
        for _ in range(repeats):
            start = time.perf_counter()
            apply_morph(name, graph, weights, site, params, calibration=calibration)
            out.append((time.perf_counter() - start) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=56)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=64, help="images in the calibration batch")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    graph = resnet(args.depth)
    weights = init_weights(graph, seed=0)
    batch = torch.randn(args.calibration, *graph.input_shape, generator=torch.Generator().manual_seed(1))
    table = Table(title=f"morph latency on resnet{args.depth} (3x32x32, {args.threads} threads), ms")
    for column in ("morph", "sites", "median", "fastest", f"median, calibrated ({args.calibration})", "fastest, cal."):
        table.add_column(column, justify="left" if column == "morph" else "right")
    for name in sorted(MORPHS):
        n_sites = len(MORPHS[name].sites(graph))
        if not n_sites:
            table.add_row(name, "0", "-", "-", "-", "-")
            continue
        bare = timings(name, graph, weights, None, args.sites, args.repeats)
        cal = timings(name, graph, weights, batch, args.sites, args.repeats)
        table.add_row(name, str(n_sites), *(f"{f(t):.1f}" for t in (bare, cal) for f in (statistics.median, min)))
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
