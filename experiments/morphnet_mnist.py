"""MorphNet on MNIST 5k: one shrink-expand cycle vs the uniform width multiplier alone, at equal MACs.

Gordon et al. (CVPR 2018), the seed summary's §1 and §3.1: at the same FLOP budget, the
structure MorphNet learns (shrink with the FLOP-weighted gamma regulariser, expand with a
uniform width multiplier) beats the seed scaled by a width multiplier alone. Protocol here,
per seed (the seed also picks the train / validation / test split of MNIST 5k, 4,000 / 500 / 500):

1. ``budget = --budget x MACs(seed network)``.
2. MorphNet: train the seed network with the MAC regulariser for ``--reg-epochs``; remove the
   channels with ``|gamma| < --threshold``; expand uniformly (exact widen) to the largest width
   multiplier within budget.
3. Baseline: the seed network scaled by the largest uniform width multiplier within budget.
4. Both architectures equalised to within 2 % MACs (the larger re-fitted to the smaller's MACs
   when they are further apart), re-initialised from the same seed and trained from scratch
   for ``--epochs`` with the same schedule (MorphNet judges a structure by training it anew).

Prints a markdown report (the command, timings, per-seed table, mean and standard deviation)
to stdout; ``--md FILE`` writes it there too.

    .venv/bin/python experiments/morphnet_mnist.py --arch resnet20 --md experiments/morphnet_mnist.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from morphnas.ir import ArchGraph, build_seed, compile_graph, cost, init_weights
from morphnas.morphnet import expand_to_budget, layer_widths, regulariser, shrink, train_regularised
from morphnas.train import TrainConfig, evaluate, load_dataset, train

STAGES = ("stem", "s1", "s2", "s3")


def stage_widths(graph: ArchGraph) -> str:
    """Mean output width of the convolutions of each stage (block inner convs / stream convs)."""
    widths = layer_widths(graph)
    out = []
    for stage in STAGES:
        inner = [w for n, w in widths.items() if n.startswith(stage) and n.endswith("_1_conv")]
        stream = [w for n, w in widths.items() if n.startswith(stage) and (n.endswith("_2_conv") or n == "stem_conv")]
        part = f"{stage}:" + "/".join(str(round(statistics.mean(x))) if x else "-" for x in (inner, stream))
        out.append(part if stage != "stem" else f"stem:{stream[0] if stream else '-'}")
    return " ".join(out)


def fit(graph: ArchGraph, weights: dict, budget: float, seed: int) -> tuple[ArchGraph, float]:
    result = expand_to_budget(graph, weights, budget, "macs", seed=seed)
    return result.graph, result.factor


def run_seed(args: argparse.Namespace, seed: int, log) -> dict:
    data = load_dataset("mnist5k", split_seed=seed, augment=False)
    seed_graph = build_seed(args.arch, data.input_shape, data.num_classes)
    budget = args.budget * cost(seed_graph)["macs"]
    weights = init_weights(seed_graph, seed)
    t0 = time.perf_counter()

    # MorphNet: regularised training, shrink, expand
    model = compile_graph(seed_graph, weights)
    penalty = regulariser(seed_graph, "macs", strength=args.strength, threshold=args.threshold)
    config = TrainConfig(epochs=args.reg_epochs, lr=args.lr, batch_size=args.batch_size, seed=seed,
                         threads=args.threads)
    run = train_regularised(model, data, config, penalty)
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shrunk = shrink(seed_graph, trained, threshold=args.threshold, calibration=data.train.x[:256])
    t_shrink = time.perf_counter() - t0
    log(f"  seed {seed}: regularised {args.reg_epochs} epochs (val error {run.result.val_error:.3f}) in "
        f"{t_shrink:.0f} s; shrunk to {cost(shrunk.graph)['macs']:,} MACs: {shrunk.note}")
    morph_graph, morph_w = fit(shrunk.graph, shrunk.weights, budget, seed)
    base_graph, base_w = fit(seed_graph, weights, budget, seed)
    morph_macs, base_macs = cost(morph_graph)["macs"], cost(base_graph)["macs"]
    if abs(morph_macs - base_macs) > 0.02 * min(morph_macs, base_macs):  # re-fit the larger to the smaller
        if morph_macs > base_macs:
            morph_graph, morph_w = fit(shrunk.graph, shrunk.weights, base_macs, seed)
        else:
            base_graph, base_w = fit(seed_graph, weights, morph_macs, seed)
        morph_macs, base_macs = cost(morph_graph)["macs"], cost(base_graph)["macs"]

    row = {"seed": seed, "budget": budget, "morph_factor": morph_w, "base_factor": base_w,
           "morph_macs": morph_macs, "base_macs": base_macs, "shrunk_macs": cost(shrunk.graph)["macs"],
           "morph_params": cost(morph_graph)["params"], "base_params": cost(base_graph)["params"],
           "morph_widths": stage_widths(morph_graph), "base_widths": stage_widths(base_graph),
           "reg_val_error": run.result.val_error}
    for arm, graph in (("morph", morph_graph), ("base", base_graph)):
        t = time.perf_counter()
        net = compile_graph(graph, init_weights(graph, seed))
        cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=seed, threads=args.threads)
        result = train(net, data, cfg)
        row[f"{arm}_val"] = result.val_error
        row[f"{arm}_test"] = evaluate(net, data.test)
        row[f"{arm}_seconds"] = time.perf_counter() - t
        log(f"  seed {seed}: {arm} ({row[f'{arm}_widths']}) {row[f'{arm}_macs']:,} MACs: val error "
            f"{result.val_error:.3f}, test {row[f'{arm}_test']:.3f} in {row[f'{arm}_seconds']:.0f} s")
    row["seconds"] = time.perf_counter() - t0
    return row


def report(args: argparse.Namespace, rows: list[dict], seconds: float) -> str:
    seed_graph = build_seed(args.arch, (1, 28, 28), 10)
    c = cost(seed_graph)
    lines = [
        f"# MorphNet on MNIST 5k: {args.arch}, one shrink-expand cycle vs the width multiplier alone",
        "",
        "Command:",
        "",
        f"    .venv/bin/python {' '.join(sys.argv)}",
        "",
        f"Seed network {args.arch} (1x28x28): {c['macs']:,} MACs, {c['params']:,} params. Budget "
        f"{args.budget} x seed MACs. MorphNet arm: {args.reg_epochs} epochs with the MAC gamma regulariser "
        f"(strength {args.strength} / seed MACs, max over tied BNs), channels with |gamma| < {args.threshold} "
        f"removed, exact uniform expand to budget. Baseline: {args.arch} x uniform width multiplier. Both "
        f"re-initialised and trained from scratch for {args.epochs} epochs (SGD lr {args.lr}, cosine, batch "
        f"{args.batch_size}, weight decay 1e-4, no augmentation), {args.threads} thread(s). Seed s uses split "
        f"seed s. Errors are fractions of the 500 validation (and 500 test) images.",
        "",
        "| seed | baseline w | baseline MACs | baseline val err | MorphNet shrunk MACs | MorphNet w | "
        "MorphNet MACs | MorphNet val err | baseline test err | MorphNet test err |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['base_factor']:.3f} | {r['base_macs']:,} | {r['base_val']:.3f} | "
            f"{r['shrunk_macs']:,} | {r['morph_factor']:.3f} | {r['morph_macs']:,} | {r['morph_val']:.3f} | "
            f"{r['base_test']:.3f} | {r['morph_test']:.3f} |"
        )

    def ms(key: str) -> str:
        values = [r[key] for r in rows]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    lines += [
        f"| mean ± sd | | | {ms('base_val')} | | | | {ms('morph_val')} | {ms('base_test')} | {ms('morph_test')} |",
        "",
        "Mean output widths per stage (inner conv of each block / stream convs):",
        "",
    ]
    for r in rows:
        lines.append(f"- seed {r['seed']}: baseline `{r['base_widths']}`; MorphNet `{r['morph_widths']}` "
                     f"(MACs differ by {100 * abs(r['morph_macs'] - r['base_macs']) / r['base_macs']:.2f} %)")
    lines += ["", f"Wall time: {seconds:.0f} s in total on a shared 2-core machine."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--budget", type=float, default=0.5, help="fraction of the seed network's MACs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reg-epochs", type=float, default=4)
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--strength", type=float, default=4.0)
    parser.add_argument("--threshold", type=float, default=1e-2)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--md", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    rows = [run_seed(args, seed, log) for seed in args.seeds]
    text = report(args, rows, time.perf_counter() - started)
    print(text)
    if args.md is not None:
        args.md.write_text(text)


if __name__ == "__main__":
    main()
