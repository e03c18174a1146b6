"""Algorithm 2 (alternating least squares on eq. 7) on module (D) of Wei, Wang, Chen (2017).

Prints, per width, the relative residual ||G̃ - M(F)|| / ||G̃||, the sweeps and the wall time:

- module (D) as in the fixtures (F1-F4 1x1, F5-F7 3x3; G 3x3, so F5-F7 are each as large as G̃:
  the paper's assumption) at 16, 64 and 256 channels: one sweep to rounding is expected;
- all seven filters 3x3 at 8 channels (G̃ 7x7, no filter large enough), 30 sweeps: it stalls
  (figures in docs/design.md#the-module-solver).

    .venv/bin/python benchmarks/module_solver.py [--channels 16 64 256] [--threads 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import os

import torch

from morphnas.modules import MODULES, module_filter, pad_kernel, solve_module, with_kernels


def run(name: str, m, channels: int, seed: int, max_sweeps: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(channels, channels, 3, 3, generator=gen, dtype=torch.float64)
    res = solve_module(m, g, seed=seed, max_sweeps=max_sweeps)
    target = pad_kernel(g, module_filter(m, res.filters).shape[-1])
    check = float((target - module_filter(m, res.filters)).norm() / target.norm())
    history = " ".join(f"{r:.2e}" for r in res.history[:3]) + (" ..." if len(res.history) > 3 else "")
    print(
        f"{name:<14} {channels:>8} {res.residual:>12.3e} {check:>12.3e} {res.sweeps:>6} "
        f"{'yes' if res.converged else 'no':>9} {res.ms:>10.0f}   {history}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--threads", type=int, default=int(os.environ.get("MORPHNAS_THREADS", "2")))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stall-sweeps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, float64, seed {args.seed}")
    print(f"{'module':<14} {'channels':>8} {'residual':>12} {'recomputed':>12} {'sweeps':>6} "
          f"{'converged':>9} {'ms':>10}   residual after sweeps 1-3")
    solve_module(MODULES["D"], torch.randn(4, 4, 3, 3, dtype=torch.float64))  # warm-up (LAPACK, conv)
    for c in args.channels:
        run("D", MODULES["D"], c, args.seed, 50)
    all3 = with_kernels(MODULES["D"], {f"F{i}": 3 for i in range(1, 8)})
    run("D all 3x3", all3, 8, args.seed, args.stall_sweeps)


if __name__ == "__main__":
    main()
