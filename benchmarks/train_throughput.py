"""Training throughput of ``morphnas.train.train`` against a bare hand-written PyTorch loop.

Both runs train the same compiled network from the same initial weights on the same data with
the same batch size, number of steps and SGD settings, and both evaluate the validation split
after every epoch (as ``train`` does); the bare loop keeps PyTorch's default memory layout, so
the ratio includes ``train``'s ``channels_last`` (and its augmentation, where the data set has
one, which the bare loop skips). They alternate ``--repeats`` times in one process; the
table shows the median images per wall second and per CPU second (steadier on a shared
machine) and their ratios (target on CPU: >= 0.95x).

    .venv/bin/python benchmarks/train_throughput.py --arch resnet20 --dataset mnist5k --epochs 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from morphnas.ir import compile_graph, load_arch
from morphnas.train import Dataset, TrainConfig, evaluate, load_dataset, train


def bare_loop(model: nn.Module, data: Dataset, config: TrainConfig) -> None:
    """The loop one would write by hand: whole epochs of full batches, constant learning rate."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    x, y = data.train.x, data.train.y
    steps = len(y) // config.batch_size
    for _ in range(int(config.epochs)):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        for i in range(steps):
            index = order[i * config.batch_size : (i + 1) * config.batch_size]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
        evaluate(model, data.val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    data = load_dataset(args.dataset)
    graph = load_arch(args.arch, input_shape=data.input_shape, num_classes=data.num_classes)
    torch.manual_seed(0)
    initial = compile_graph(graph).state_dict()
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size)
    images = args.epochs * (len(data.train) // args.batch_size) * args.batch_size

    def fresh() -> nn.Module:
        return compile_graph(graph, {k: v.clone() for k, v in initial.items()})

    bare_loop(fresh(), data, TrainConfig(epochs=1, batch_size=args.batch_size, max_train_batches=3))  # warm up
    runs: dict[str, list[tuple[float, float]]] = {"bare loop": [], "train()": []}  # (wall, CPU) images/s
    for _ in range(args.repeats):
        for name in runs:
            model = fresh()
            wall, cpu = time.perf_counter(), time.process_time()
            if name == "bare loop":
                bare_loop(model, data, config)
            elif train(model, data, config).epochs != args.epochs:
                raise SystemExit(f"train() did not run {args.epochs} epochs")
            runs[name].append((images / (time.perf_counter() - wall), images / (time.process_time() - cpu)))

    medians = {name: [statistics.median(r[i] for r in values) for i in (0, 1)] for name, values in runs.items()}
    print(
        f"{args.arch} on {args.dataset}: {images} training images per run, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} alternating runs"
    )
    print(f"{'loop':<12}{'images/s':>10}{'images/CPU-s':>14}   wall images/s of each run")
    for name, values in runs.items():
        each = " ".join(f"{wall:.0f}" for wall, _ in values)
        print(f"{name:<12}{medians[name][0]:>10.1f}{medians[name][1]:>14.1f}   {each}")
    wall_ratio = medians["train()"][0] / medians["bare loop"][0]
    cpu_ratio = medians["train()"][1] / medians["bare loop"][1]
    print(f"ratio train()/bare loop: {wall_ratio:.3f}x wall, {cpu_ratio:.3f}x CPU time")


if __name__ == "__main__":
    main()
