"""The search against the obvious alternatives, at one wall-clock budget, on several splits.

``--dataset mnist5k`` (the default space, ``search_spaces/default.yaml``) or ``fashion-mnist``
(``search_spaces/fashion.yaml``). Arms, run one at a time on the same machine, each by the
project's own trainer and data pipeline (augmentation included, alike for all):

- ``search``: the data set's search space with ``--budget`` seconds;
- ``seed``: its seed architecture trained from scratch for the whole budget (cosine to zero);
- ``resnet20``: ResNet-20 trained from scratch for the whole budget;
- ``scratch``: the same search with weight inheritance off (every child, and the final network,
  starts from fresh random weights): learning by morphing against learning from scratch;
- ``random``: the same search with Optuna's RandomSampler instead of TPE;
- ``wrn``: a wide ResNet trained from scratch for the budget, the strongest thing a user would
  try by hand; its depth and width (:data:`WRN`) were chosen on validation among the
  ``wrn-D-K`` rows (ResNet-D with K times the widths: ``--arms wrn-8-2 wrn-14-2 ...``);
- ``grow``: the seed trained for the budget and grown on a fixed schedule through the same exact
  morphs (twice the width at a third, one more convolution per stage at two thirds;
  :mod:`morphnas.search.grow`), no search and no selection: growing against searching.

Ablations of the search's levers (one lever off each): ``search-error`` (parents and final
network chosen by validation error, not loss), ``search-nofinal`` (no final phase),
``search-noaug`` (no augmentation: compare with ``seed-noaug``) and ``search-nocontrol`` (no
unmorphed control child in a generation). ``--set budget.seed_share=0.4`` changes one setting
of the default search space for every arm (repeatable; the value is read as YAML); such rows
are named by their arm and settings, e.g. ``search budget.seed_share=0.4``, so a lever can be
measured before it becomes the default.

One JSON line per (arm, split) is appended to ``--out``; rows already there for the same
(arm, split, budget, commit, data set) are skipped, so the table can be built in parts. Every
row records the load average and the cores it used (a figure is only worth as much as the quiet
of the machine that made it), a search row where its time went (``timeline``), and which test
images its network got right, so the table gives, per split, McNemar's
exact test of the search against each other arm (a binomial test on the images only one of the
two got right).

    .venv/bin/python benchmarks/search_vs_baselines.py --budget 600 --splits 0 1 2
    .venv/bin/python benchmarks/search_vs_baselines.py --budget 120 --splits 0 1 2   # quick mode
    .venv/bin/python benchmarks/search_vs_baselines.py --table --budget 600          # print the table only
    .venv/bin/python benchmarks/search_vs_baselines.py --budget 120 --arms search --set budget.children=2
    .venv/bin/python benchmarks/search_vs_baselines.py --dataset fashion-mnist --budget 600 --splits 0 1 2 \
        --arms search seed resnet20 scratch random wrn grow
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import yaml
from scipy.stats import binomtest

import morphnas
from morphnas.errors import ConfigError
from morphnas.execute import ProcessExecutor
from morphnas.grammar.space import SearchSpace, load_space, parse_space
from morphnas.ir import ArchGraph, compile_graph, cost, init_weights, load_arch, resnet
from morphnas.search import SearchOptions, run_search
from morphnas.search.grow import grow, resnet_schedule
from morphnas.search.record import TrialRecord
from morphnas.search.study import lineage, load_study, open_storage
from morphnas.train import Split, TrainConfig, load_checkpoint, load_dataset, train

ARMS = ("search", "seed", "resnet20", "scratch", "random", "wrn", "grow")
SPACES = {"mnist5k": "default", "fashion-mnist": "fashion"}
WRN = (8, 2)  # the wrn arm's depth and width multiplier: chosen on validation among the wrn-D-K rows
WRN_ARM = re.compile(r"wrn-(\d+)-(\d+)")
ABLATIONS = ("search-error", "search-nofinal", "search-noaug", "seed-noaug", "search-nocontrol")
OUT = Path(__file__).resolve().parents[1] / "experiments" / "search_vs_baselines.jsonl"


def commit() -> str:
    """HEAD, with ``+dirty`` when the code differs from it (such rows belong to no commit). The
    code must be this checkout's: a second checkout (a git worktree kept for benchmarks) run
    with another checkout's editable install would label that one's code with this one's commit."""
    root = Path(__file__).resolve().parents[1]
    imported = Path(morphnas.__file__).resolve().parents[1]
    if imported != root:
        raise SystemExit(f"morphnas is imported from {imported}, not from this checkout ({root}): "
                         f"run with PYTHONPATH={root}")
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "morphnas", "search_spaces",
                            "benchmarks", "pyproject.toml"], cwd=root, capture_output=True, text=True)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


OWN_SETTINGS = {"budget.time_budget": "--budget", "dataset.split_seed": "--splits"}  # the benchmark sets these


def parse_settings(words: list[str]) -> dict[str, Any]:
    """``["budget.children=2", ...]`` as ``{"budget.children": 2, ...}`` (values read as YAML)."""
    settings = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {word}: expected key=value, e.g. budget.seed_share=0.4")
        if key in OWN_SETTINGS:
            raise SystemExit(f"--set {key}: set by {OWN_SETTINGS[key]}, not --set")
        settings[key] = yaml.safe_load(value)
    return settings


def label(arm: str, settings: dict[str, Any]) -> str:
    """The row's arm: the arm and, when any, the settings it ran with."""
    return " ".join([arm, *(f"{key}={json.dumps(value)}" for key, value in settings.items())])


def space_for(arm: str, split: int, budget: float, settings: dict[str, Any] | None = None,
              dataset: str = "mnist5k") -> SearchSpace:
    data = load_space(SPACES[dataset]).model_dump(mode="json")
    for key, value in (settings or {}).items():
        *path, leaf = key.split(".")
        node = data
        for part in path:
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"--set {key}: the search space has no section {part!r}")
            node = node[part]
        node[leaf] = value
    data["dataset"]["split_seed"] = split
    data["budget"]["time_budget"] = budget
    if arm == "search-error":
        data["selection"]["metric"] = "error"
    elif arm == "search-nofinal":
        data["final"] = None
    elif arm == "search-nocontrol":
        data["selection"]["control"] = False
    elif arm in ("search-noaug", "seed-noaug"):
        data["dataset"]["augment"] = False
    return parse_space(data, f"arm {arm}")


def run_search_arm(arm: str, space: SearchSpace, split: int) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if arm == "scratch":
        options["inherit"] = False
    elif arm == "random":
        options["sampler"] = optuna.samplers.RandomSampler(seed=split)
    started = time.monotonic()
    # children side by side, a core each (`morphnas search --executor processes`)
    with tempfile.TemporaryDirectory() as workdir, ProcessExecutor() as executor:
        summary = run_search(SearchOptions(space=space, workdir=Path(workdir), study="bench", seed=split,
                                           executor=executor, **options))
        study = load_study(open_storage(summary.storage), "bench")
        line = lineage(study, summary.best_trial)
        records = [TrialRecord.from_trial(t) for t in line]
        epochs = sum(r.epochs or len(r.history or []) for r in records)
        val_loss = TrialRecord.from_trial(study.trials[summary.best_trial]).val_loss
        arch, weights, _ = load_checkpoint(summary.checkpoint)
        ds = space.dataset
        test = load_dataset(ds.name, data_root=ds.data_root, split_seed=split, augment=ds.augment).test
        correct = tested(compile_graph(ArchGraph.from_json(arch), weights), test)["test_correct"]
    return {"wall_seconds": round(time.monotonic() - started, 1), "epochs": epochs, "val_error": summary.val_error,
            "val_loss": val_loss,
            "test_error": summary.test_error, "params": summary.params, "macs": summary.macs,
            "n_trials": summary.n_trials, "seed_test_error": summary.seed_test_error,
            # what the final network's lineage is made of: seed, each generation's winning rule, final
            "lineage_rules": [r.rule for r in records], "timeline": timeline(study, line),
            "test_correct": correct}


def timeline(study: optuna.Study, line: list[optuna.trial.FrozenTrial]) -> dict[str, Any]:
    """Where a search's time went: each lineage trial's (rule, start s, seconds, epochs, MACs),
    and the epochs every trial trained against those its lineage kept (the rest is the price of
    choosing)."""
    start = study.trials[0].datetime_start

    def row(t: optuna.trial.FrozenTrial) -> list[Any]:
        r = TrialRecord.from_trial(t)
        return [r.rule, round((t.datetime_start - start).total_seconds(), 1), r.seconds, r.epochs, r.macs]

    def epochs(trials: list[optuna.trial.FrozenTrial]) -> float:
        return round(sum(TrialRecord.from_trial(t).epochs or 0.0 for t in trials), 3)

    return {"lineage": [row(t) for t in line], "epochs_trained": epochs(study.trials), "epochs_kept": epochs(line)}


def tested(model: torch.nn.Module, test: Split) -> dict[str, Any]:
    """``model``'s test error and which test images it gets right (``test_correct``: the hex of
    their packed bits, in test order), from one pass over the test set."""
    with torch.no_grad():
        model.eval()
        right = torch.cat([model(x).argmax(1) == y for x, y in zip(test.x.split(1000), test.y.split(1000),
                                                                      strict=True)])
    return {"test_error": 1 - right.float().mean().item(), "test_correct": np.packbits(right.numpy()).tobytes().hex()}


def run_training_arm(arm: str, space: SearchSpace, split: int, budget: float) -> dict[str, Any]:
    """``arm``'s network trained from scratch with the seed's learning rate, cosine to zero, for
    ``budget`` s; ``grow`` grows it on the way (:func:`morphnas.search.grow.grow`)."""
    started = time.monotonic()
    ds = space.dataset
    data = load_dataset(ds.name, data_root=ds.data_root, split_seed=split, augment=ds.augment)
    graph = network_of(arm, space, data.input_shape, data.num_classes)
    weights = init_weights(graph, split)
    s = space.seed
    config = TrainConfig(epochs=10_000, lr=s.lr, batch_size=s.batch_size, seed=split)
    left = budget - (time.monotonic() - started)
    if arm == "grow":
        grown = grow(graph, weights, data, config, left, resnet_schedule(), seed=split)
        graph, runs, extra = grown.graph, grown.runs, {"preservation": grown.preservation}
        model = compile_graph(graph, grown.weights)
    else:
        model = compile_graph(graph, weights)
        runs, extra = [train(model, data, dataclasses.replace(config, time_limit=left))], {}
    graph_cost = cost(graph)
    return {"wall_seconds": round(time.monotonic() - started, 1), "epochs": sum(r.epochs for r in runs),
            "val_error": runs[-1].val_error, "val_loss": runs[-1].val_loss, "params": graph_cost["params"],
            "macs": graph_cost["macs"], **tested(model, data.test), **extra}


def network_of(arm: str, space: SearchSpace, input_shape: tuple[int, ...], classes: int) -> ArchGraph:
    """The network a training arm trains: the seed's (``seed``, ``grow``), ResNet-20, or ResNet-D
    with K times the widths (``wrn-D-K``; ``wrn`` is :data:`WRN`)."""
    if arm == "resnet20":
        return load_arch("resnet20", input_shape, classes, shortcut=space.seed.shortcut)
    wide = WRN_ARM.fullmatch(arm) or (arm == "wrn" and WRN_ARM.fullmatch(f"wrn-{WRN[0]}-{WRN[1]}"))
    if wide:
        depth, k = int(wide.group(1)), int(wide.group(2))
        return resnet(depth, tuple(input_shape), classes, shortcut=space.seed.shortcut, width=16 * k)
    return load_arch(space.seed.arch, input_shape, classes, shortcut=space.seed.shortcut)


TRAINING_ARMS = ("seed", "seed-noaug", "resnet20", "wrn", "grow")


def run_arm(arm: str, split: int, budget: float, settings: dict[str, Any], dataset: str) -> dict[str, Any]:
    space = space_for(arm, split, budget, settings, dataset)
    if arm in TRAINING_ARMS or WRN_ARM.fullmatch(arm):
        return run_training_arm(arm, space, split, budget)
    return run_search_arm(arm, space, split)


def cores_used(before: os.times_result, after: os.times_result) -> float:
    """The CPU seconds this process and its finished children (the executor's workers) used
    between two :func:`os.times`, per wall second: about 2 on 2 cores when the row had the
    machine to itself. The load average also counts idle-priority processes that got almost no
    CPU (`nice -n 19` helpers beside a benchmark in a high-share cgroup), so this is the
    figure that says whether the row had the machine."""
    cpu = sum(getattr(after, f) - getattr(before, f) for f in ("user", "system", "children_user", "children_system"))
    return round(cpu / max(1e-9, after.elapsed - before.elapsed), 2)


def mcnemar(a: str, b: str) -> float:
    """McNemar's exact two-sided p of two networks on one test set, from :func:`tested`:
    a binomial test with p = 1/2 on the images exactly one of them got right."""
    x, y = (np.unpackbits(np.frombuffer(bytes.fromhex(h), np.uint8)) for h in (a, b))
    only_a, only_b = int((x & ~y & 1).sum()), int((~x & y & 1).sum())
    return 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b, 0.5).pvalue


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


BUSY_LOAD = 2.5  # the benchmark itself keeps the 1-minute load near 2 on 2 cores; above this something else ran
FULL_SHARE = 0.9  # a row that used less than this share of the cores (``cores_used``) did not have the machine


def busy(row: dict[str, Any]) -> bool:
    """Whether something else took the machine during ``row``: by the cores it used when it
    recorded them, else by the load average."""
    if "cores_used" in row:
        return row["cores_used"] < FULL_SHARE * len(os.sched_getaffinity(0))
    return max(row["load_before"], row["load_after"]) > BUSY_LOAD


def print_table(rows: list[dict[str, Any]], budget: float, commits: list[str] | None = None,
                dataset: str = "mnist5k") -> None:
    """The last row of each (arm, split) at ``budget`` on ``dataset`` (of ``commits`` only, when
    given, each a prefix): test error (validation error), the means, spread, validation loss, wall
    time, commits, and per split McNemar's p of the search against the arm (where both rows
    recorded their test images)."""
    rows = [r for r in rows if r["budget"] == budget and r.get("dataset", "mnist5k") == dataset
            and (not commits or r["commit"].startswith(tuple(commits)))]
    named = {r["arm"]: None for r in rows}  # arms with --set settings after the plain ones, in file order
    arms = [a for a in (*ARMS, *ABLATIONS) if a in named] + [a for a in named if a not in (*ARMS, *ABLATIONS)]
    splits = sorted({r["split"] for r in rows})
    print(f"test error at a {budget:g} s budget (validation error in brackets); mean and spread over splits; "
          f"* = something else ran (under {FULL_SHARE:.0%} of the cores used, or a load average over {BUSY_LOAD})")
    print("| arm | " + " | ".join(f"split {s}" for s in splits)
          + " | mean test | sd | mean val | mean val loss | wall s | commit | McNemar p vs search |")
    print("|---|" + "---:|" * (len(splits) + 5) + "---|---|")
    last = {(r["arm"], r["split"]): r for r in rows}
    for arm in arms:
        cells, tests, vals, losses, walls, commits_seen, ps = [], [], [], [], [], set(), []
        for split in splits:
            if (arm, split) not in last:
                cells.append("-")
                continue
            r = last[arm, split]
            search = last.get(("search", split), {})
            if arm != "search" and "test_correct" in r and "test_correct" in search:
                ps.append(f"{mcnemar(search['test_correct'], r['test_correct']):.3g}")
            mark = "*" if busy(r) else ""
            cells.append(f"{r['test_error']:.2%} ({r['val_error']:.2%}){mark}")
            tests.append(r["test_error"])
            vals.append(r["val_error"])
            losses.append(r["val_loss"])
            walls.append(r["wall_seconds"])
            commits_seen.add(r["commit"])
        sd = f"{statistics.stdev(tests):.2%}" if len(tests) > 1 else "-"
        print(f"| {arm} | " + " | ".join(cells) + f" | {statistics.mean(tests):.2%} | {sd} | "
              f"{statistics.mean(vals):.2%} | {statistics.mean(losses):.4f} | {statistics.mean(walls):.0f} | "
              f"{', '.join(sorted(commits_seen))} | {' / '.join(ps) or '-'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="seconds per arm (120: quick mode)")
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dataset", default="mnist5k", choices=list(SPACES))
    parser.add_argument("--arms", nargs="+", default=list(ARMS[:5]), metavar="ARM",
                        help=f"{', '.join((*ARMS, *ABLATIONS))} or wrn-D-K (ResNet-D, K times as wide)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="only print the table of what --out holds")
    parser.add_argument("--commits", nargs="+", help="the table shows rows of these commits (prefixes) only")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="change a setting of the default search space, e.g. budget.seed_share=0.4")
    args = parser.parse_args()
    settings = parse_settings(args.set)
    for arm in args.arms:  # a wrong arm or key fails now, not after an hour of other rows
        if arm not in (*ARMS, *ABLATIONS) and not WRN_ARM.fullmatch(arm):
            raise SystemExit(f"--arms: unknown arm {arm!r}; choose from {', '.join((*ARMS, *ABLATIONS))} or wrn-D-K")
        try:
            space_for(arm, 0, args.budget, settings, args.dataset)
        except ConfigError as err:
            raise SystemExit(f"--set: {err}") from None
    if not args.table:
        head = commit()
        for split in args.splits:
            for arm in args.arms:
                name = label(arm, settings)
                done = {(r["arm"], r["split"], r["budget"], r["commit"], r.get("dataset", "mnist5k"))
                        for r in read_rows(args.out)}
                if (name, split, args.budget, head, args.dataset) in done:
                    print(f"skip {name} split {split}: already in {args.out}", flush=True)
                    continue
                load_before, times_before = os.getloadavg()[0], os.times()
                row = {"commit": head, "arm": name, "dataset": args.dataset, "split": split, "budget": args.budget,
                       **run_arm(arm, split, args.budget, settings, args.dataset), "load_before": load_before,
                       "load_after": os.getloadavg()[0], "cores_used": cores_used(times_before, os.times())}
                with args.out.open("a") as out:
                    out.write(json.dumps(row) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k != "test_correct"}), flush=True)
    print_table(read_rows(args.out), args.budget, args.commits, args.dataset)


if __name__ == "__main__":
    main()
