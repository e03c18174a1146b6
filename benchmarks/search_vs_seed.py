"""The default search against its seed network trained from scratch for the same wall time.

For each split seed: run the search of a search space (default: ``search_spaces/default.yaml``)
with that split, then train the space's seed architecture from scratch, with the seed's
learning rate and a cosine schedule, for as many epochs as fit in the search's wall time
(measured on a one-epoch probe in the same run). Prints validation and test error of both arms
and their means. A search that only beats its seed because the seed trained less proves
nothing; this is the comparison that counts (DESIGN.md, "Search").

    .venv/bin/python benchmarks/search_vs_seed.py --splits 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from morphnas.grammar.space import load_space
from morphnas.ir import compile_graph, init_weights, load_arch
from morphnas.search import SearchOptions, run_search
from morphnas.train import TrainConfig, evaluate, load_dataset, train


def seed_for_same_time(space, split: int, seconds: float) -> tuple[float, float, float]:
    """(val error, test error, epochs) of the seed architecture trained for ``seconds``."""
    data = load_dataset(space.dataset.name, data_root=space.dataset.data_root, split_seed=split)
    graph = load_arch(space.seed.arch, data.input_shape, data.num_classes, shortcut=space.seed.shortcut)
    probe = compile_graph(graph, init_weights(graph, split))
    started = time.perf_counter()
    train(probe, data, TrainConfig(epochs=1, lr=space.seed.lr, batch_size=space.seed.batch_size, seed=split))
    epochs = max(1, round(seconds / (time.perf_counter() - started)))
    model = compile_graph(graph, init_weights(graph, split))
    config = TrainConfig(epochs=epochs, lr=space.seed.lr, batch_size=space.seed.batch_size, seed=split)
    result = train(model, data, config)
    return result.val_error, evaluate(model, data.test), epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="default")
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    space = load_space(args.space)
    rows = []
    for split in args.splits:
        split_space = space.model_copy(update={"dataset": space.dataset.model_copy(update={"split_seed": split})})
        with tempfile.TemporaryDirectory() as workdir:
            summary = run_search(SearchOptions(space=split_space, workdir=Path(workdir), study="bench", seed=split))
        val, test, epochs = seed_for_same_time(space, split, summary.seconds)
        rows.append((split, summary.seconds, summary.val_error, summary.test_error, epochs, val, test))
        print(f"split {split}: search {summary.seconds:.0f} s, val {summary.val_error:.2%}, test "
              f"{summary.test_error:.2%} | seed {epochs} epochs, val {val:.2%}, test {test:.2%}", flush=True)
    print()
    print("| split | seconds | search val | search test | seed epochs | seed val | seed test |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for split, seconds, sv, st, epochs, bv, bt in rows:
        print(f"| {split} | {seconds:.0f} | {sv:.2%} | {st:.2%} | {epochs} | {bv:.2%} | {bt:.2%} |")
    means = [statistics.mean(r[i] for r in rows) for i in (2, 3, 5, 6)]
    print(f"| mean | | {means[0]:.2%} | {means[1]:.2%} | | {means[2]:.2%} | {means[3]:.2%} |")


if __name__ == "__main__":
    main()
