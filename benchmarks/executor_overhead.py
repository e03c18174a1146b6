"""Per-child cost of every executor against in-process execution, on the same children.

Runs N identical-size children (the ``--arch`` seed, ``cnn`` by default; distinct trial numbers,
so distinct seeds) five ways in one process and prints a table:

- in-process: :class:`LocalExecutor`, one after another, ``--cpus`` threads each;
- ray 1-at-a-time: :class:`RayExecutor` with ``max_concurrent=1`` and the same threads, so the
  difference to in-process is pure overhead (Tune start-up, worker start-up and imports, data
  loading in the worker, object store, per-epoch reports, checkpoint write and read);
- ray parallel: as many children at once as the local Ray's CPUs allow;
- processes: :class:`ProcessExecutor`, as many children at once in worker processes as whole
  ``--cpus`` fit in the cores (the command line's default executor), workers started once;
- in-process on every core: one after another, all torch threads (``--executor local``).

"children/h" is 3,600 over wall/child: what a search's generations can train in an hour.

Each executor runs the batch ``--repeats`` times and the fastest run is shown (the machine
may be shared). Every Ray run starts its workers afresh, as every generation of a search does;
the in-process executor pays its lazy imports once per process only.

"wall/child" is the run's wall time over N; "first s" the time to the first result (Ray: the
fixed cost of a run, Tune and worker start-up, plus one child); "next/child" the time per
child after the first, (wall - first) / (N - 1), the steady-state cost; "train/child" the mean
time measured inside :func:`run_child` (includes each worker's first-call costs: data,
lazy imports); "overhead/child" is wall/child minus in-process wall/child; "ratio" is
wall/child over in-process wall/child, "next ratio" the same for next/child. Ray's own
start-up (``ray.init``) is reported separately. The children's validation errors must agree
across the three runs (same seed -> same result on the CPU).

    .venv/bin/python benchmarks/executor_overhead.py --children 8 --dataset mnist5k --epochs 1

With ``--children 1`` the one child gets every core in each executor, as a search's seed and
final phase do: the rows then compare training in a worker process with training in-process::

    .venv/bin/python benchmarks/executor_overhead.py --children 1 --arch resnet8 --dataset fashion-mnist \
        --epochs 1 --cpus 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from morphnas.execute import ChildJob, ChildResult, DatasetSpec, LocalExecutor, ProcessExecutor
from morphnas.execute.child import cached_dataset
from morphnas.ir import init_weights, load_arch
from morphnas.train import TrainConfig


def make_jobs(n: int, dataset: str, epochs: float, arch: str = "cnn") -> list[ChildJob]:
    data = cached_dataset(DatasetSpec(dataset))
    graph = load_arch(arch, data.input_shape, data.num_classes)
    weights = init_weights(graph, seed=0)
    config = TrainConfig(epochs=epochs, lr=0.02, batch_size=128, warmup_epochs=0, seed=0)
    return [ChildJob(key, graph.to_json(), weights, config, DatasetSpec(dataset)) for key in range(1, n + 1)]


def timed(executor, jobs: list[ChildJob], repeats: int) -> tuple[float, float, dict[int, ChildResult]]:
    """The fastest of ``repeats`` runs: (wall seconds, seconds to the first result, results by key)."""
    return min((_timed_once(executor, jobs) for _ in range(repeats)), key=lambda run: run[0])


def _timed_once(executor, jobs: list[ChildJob]) -> tuple[float, float, dict[int, ChildResult]]:
    started = time.perf_counter()
    first = None
    results: dict[int, ChildResult] = {}
    for result in executor.run(jobs, on_epoch=lambda key, epoch, val_error: True):
        first = first if first is not None else time.perf_counter() - started
        results[result.key] = result
    return time.perf_counter() - started, first or 0.0, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=8)
    parser.add_argument("--dataset", default="mnist5k", choices=["digits", "mnist5k", "fashion-mnist", "synthetic"])
    parser.add_argument("--arch", default="cnn", help="the children's network: a seed name (cnn, resnet8, ...)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--cpus", type=int, default=1, help="CPUs (= torch threads) per child")
    parser.add_argument("--repeats", type=int, default=2, help="runs per executor; the fastest is shown")
    args = parser.parse_args()

    jobs = make_jobs(args.children, args.dataset, args.epochs, args.arch)
    rows: list[tuple[str, float, float, dict[int, ChildResult]]] = []

    local_wall, local_first, local = timed(LocalExecutor(cpus_per_child=args.cpus), jobs, args.repeats)
    rows.append(("in-process", local_wall, local_first, local))
    cores = len(os.sched_getaffinity(0))
    rows.append((f"in-process, {cores} threads", *timed(LocalExecutor(cpus_per_child=cores), jobs, args.repeats)))
    with ProcessExecutor(workers=max(1, cores // args.cpus)) as processes:
        list(processes.run(jobs[:1]))  # start the workers: a search pays this once
        rows.append((f"processes ({processes.workers} at once)", *timed(processes, jobs, args.repeats)))

    from morphnas.execute.ray_executor import RayExecutor

    started = time.perf_counter()
    with RayExecutor(cpus_per_child=args.cpus, max_concurrent=1) as sequential:
        ray_init = time.perf_counter() - started
        rows.append(("ray 1-at-a-time", *timed(sequential, jobs, args.repeats)))
        with RayExecutor(cpus_per_child=args.cpus) as parallel:  # shares the Ray started above
            at_once = (os.cpu_count() or 1) // args.cpus
            rows.append((f"ray parallel ({at_once} at once)", *timed(parallel, jobs, args.repeats)))

    n = len(jobs)
    base = local_wall / n
    print(
        f"\n{n} children: {args.arch} on {args.dataset}, {args.epochs:g} epoch(s), {args.cpus} CPU(s) each, "
        f"{os.cpu_count()} CPUs; fastest of {args.repeats} runs each; ray.init {ray_init:.1f} s (once, not in "
        "the table)\n"
    )
    header = f"{'executor':<26}{'wall s':>8}{'first s':>9}{'wall/child':>12}{'next/child':>12}{'train/child':>13}"
    print(header + f"{'overhead/child':>16}{'ratio':>7}{'next ratio':>12}{'children/h':>12}")
    base_next = (local_wall - local_first) / max(1, n - 1)
    for name, wall, first, results in rows:
        train = statistics.mean(r.seconds for r in results.values())
        following = (wall - first) / max(1, n - 1)
        # one child has no "next" child: those columns are left empty
        after = f"{following:>12.2f}" if n > 1 else f"{'-':>12}"
        after_ratio = f"{following / base_next:>12.2f}" if n > 1 else f"{'-':>12}"
        print(
            f"{name:<26}{wall:>8.2f}{first:>9.2f}{wall / n:>12.2f}{after}{train:>13.2f}"
            f"{wall / n - base:>+16.2f}{wall / n / base:>7.2f}{after_ratio}{3600 * n / wall:>12.0f}"
        )
    for name, _, _, results in rows[1:]:
        mismatched = [k for k in local if results[k].history != local[k].history or results[k].status != "ok"]
        same = "same validation errors as in-process" if not mismatched else f"DIFFERS for {mismatched}"
        print(f"{name}: {same}{' (expected: other thread counts round differently)' if 'threads' in name else ''}")
    print(f"load average {os.getloadavg()[0]:.2f} after the runs")


if __name__ == "__main__":
    main()
