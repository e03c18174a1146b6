"""Import torchvision networks and apply every morph to them (issue #14's ``import_torchvision`` table).

For each network (``weights=None``: nothing is downloaded; batch-norm statistics randomised, so no
batch norm is the identity): whether ``from_torch`` imports it (else its one-line refusal), the
import's max relative error against the original module, the seconds the import took, and for
every registered morph the number of sites and the worst float64 verifier error (borders
included) over three sites spread over the network: the first, the middle and the last in program
order. A morph that claims exactness must stay within 1e-10 there; ``shrink`` is approximate by
design (it removes channels) and is reported, not judged.

    .venv/bin/python benchmarks/import_torchvision.py                  # the eight networks at 3x64x64
    .venv/bin/python benchmarks/import_torchvision.py --nets vgg11_bn --input 3x224x224 --morphs   # import only
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torchvision

from morphnas.errors import MorphnasError
from morphnas.ir import from_torch
from morphnas.morph import MORPHS, TOLERANCE, apply_morph, probe_inputs, randomise_bn, verify

NETS = ("resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "densenet121", "squeezenet1_1",
        "shufflenet_v2_x1_0", "efficientnet_b0")


def spread(sites: list[str]) -> list[str]:
    """The first, middle and last site (fewer when there are fewer)."""
    picks = sorted({0, len(sites) // 2, len(sites) - 1})
    return [sites[i] for i in picks] if sites else []


def morph_row(name: str, graph, weights, calibration: torch.Tensor) -> dict:
    spec = MORPHS[name]
    sites = spec.sites(graph)
    picked = spread(sites)
    worst, exact, seconds = 0.0, True, 0.0
    for i, site in enumerate(picked):
        start = time.perf_counter()
        res = apply_morph(name, graph, weights, site, seed=i, calibration=calibration)
        seconds += time.perf_counter() - start
        check = verify(graph, weights, res.graph, res.weights, dtype=torch.float64,
                       inputs=probe_inputs(graph.input_shape, torch.float64, i))
        worst, exact = max(worst, check.max_rel_err), exact and res.exact
    return {"sites": len(sites), "checked": len(picked), "worst_rel_err": worst, "exact": exact,
            "claims_exact": spec.exact, "morph_seconds": round(seconds, 2)}


def measure(net_name: str, shape: tuple[int, ...], classes: int, morphs: list[str]) -> dict:
    torch.manual_seed(0)
    net = torchvision.models.get_model(net_name, weights=None, num_classes=classes)
    net.load_state_dict(randomise_bn(net.state_dict(), 0))
    start = time.perf_counter()
    try:
        graph, weights, err = from_torch(net.eval(), shape)
    except MorphnasError as refusal:
        return {"net": net_name, "imported": False, "refusal": str(refusal)}
    row = {"net": net_name, "imported": True, "import_seconds": round(time.perf_counter() - start, 2),
           "import_max_rel_err": err, "layers": sum(1 for _ in graph.edges()), "morphs": {}}
    weights = {k: v.double() if v.is_floating_point() else v for k, v in weights.items()}
    calibration = torch.randn(8, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name in morphs:
        row["morphs"][name] = morph_row(name, graph, weights, calibration)
    return row


def table(rows: list[dict], names: list[str]) -> str:
    lines = ["| network | imported | import error | import s |" + "".join(f" {n} |" for n in names),
             "|---|---|---:|---:|" + "---:|" * len(names)]
    for r in rows:
        if not r["imported"]:
            lines.append(f"| {r['net']} | no: {r['refusal']} | | |" + " |" * len(names))
            continue
        cells = []
        for name in names:
            m = r["morphs"][name]
            cells.append("0 sites" if not m["sites"] else f"{m['sites']}: {m['worst_rel_err']:.0e}"
                         + ("" if m["exact"] else " (approx.)"))
        lines.append(f"| {r['net']} | yes ({r['layers']} layers) | {r['import_max_rel_err']:.1e} | "
                     f"{r['import_seconds']:.1f} |" + "".join(f" {c} |" for c in cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=list(NETS))
    parser.add_argument("--input", default="3x64x64", help="C x H x W")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--morphs", nargs="*", default=sorted(MORPHS), choices=sorted(MORPHS),
                        help="the morphs to apply (none: the import alone)")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.input.split("x"))
    print(f"load average before: {os.getloadavg()[0]:.2f}; {torch.get_num_threads()} threads")
    rows = []
    for net_name in args.nets:
        row = measure(net_name, shape, args.classes, args.morphs)
        rows.append(row)
        bad = [n for n, m in row.get("morphs", {}).items()
               if m["claims_exact"] and m["exact"] and m["worst_rel_err"] > TOLERANCE[torch.float64]]
        print(f"{net_name}: " + ("imported" if row["imported"] else f"refused: {row['refusal']}")
              + (f"; exact morphs over tolerance: {bad}" if bad else ""), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(table(rows, args.morphs))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
