"""Import torchvision networks and apply every morph to them (issue #14's ``import_torchvision`` table).

For each network (``weights=None``: nothing is downloaded), its batch-norm statistics are
calibrated as a trained network's: one train-mode pass over a batch of normalised images (mean
0, variance 1 per pixel, as a normalised data set has them), each batch norm taking that
batch's own mean and variance. The network's sensitivity (the relative change of its outputs
between two random batches) must then be above the verifier's floor: a network whose output
barely depends on its input agrees with any wrong morph of itself (random statistics, which the
tests once used, left mobilenet_v2 at 2e-8). Reported per network: whether ``from_torch`` imports it
(else its one-line refusal), the import's max relative error against the original module
(float64), the seconds the import took, its sensitivity, and for every registered morph the
number of sites and the worst verifier error (borders included), in float64 and in float32, over
three sites spread over the network: the first, the middle and the last in program order. A
morph that claims exactness must stay within the verifier's float64 tolerance there (1e-10, or
ten times the network's own rounding noise where that is larger, as on efficientnet_b0); the
float32 error is reported beside the float32 rounding noise of the network, which on an
ill-conditioned network exceeds any tolerance (docs/design.md#exactness). ``shrink`` is
approximate by design (it removes channels) and is reported, not judged.

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
from morphnas.morph import (
    MORPHS,
    SENSITIVITY_FLOOR,
    apply_morph,
    calibrate_bn,
    probe_inputs,
    sensitivity,
    verify,
)

NETS = ("resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "densenet121", "squeezenet1_1",
        "shufflenet_v2_x1_0", "efficientnet_b0")


def spread(sites: list[str]) -> list[str]:
    """The first, middle and last site (fewer when there are fewer)."""
    picks = sorted({0, len(sites) // 2, len(sites) - 1})
    return [sites[i] for i in picks] if sites else []


def morph_row(name: str, graph, weights, calibration: torch.Tensor) -> dict:
    """The morph at three sites, each child checked by the verifier in float64 and in float32."""
    spec = MORPHS[name]
    sites = spec.sites(graph)
    picked = spread(sites)
    worst = {torch.float64: 0.0, torch.float32: 0.0}
    noise = dict(worst)
    exact, within, tolerance, seconds = True, True, 0.0, 0.0
    for i, site in enumerate(picked):
        start = time.perf_counter()
        res = apply_morph(name, graph, weights, site, seed=i, calibration=calibration)
        seconds += time.perf_counter() - start
        for dtype in worst:
            check = verify(graph, weights, res.graph, res.weights, dtype=dtype,
                           inputs=probe_inputs(graph.input_shape, dtype, i))
            worst[dtype] = max(worst[dtype], check.max_rel_err)
            noise[dtype] = max(noise[dtype], check.noise)
            if dtype == torch.float64:
                within, tolerance = within and check.preserved, max(tolerance, check.tolerance)
        exact = exact and res.exact
    return {"sites": len(sites), "checked": len(picked), "worst_rel_err": worst[torch.float64],
            "worst_rel_err_float32": worst[torch.float32], "noise": noise[torch.float64],
            "noise_float32": noise[torch.float32], "tolerance": tolerance, "exact": exact,
            "claims_exact": spec.exact, "within_tolerance": within, "morph_seconds": round(seconds, 2)}


def measure(net_name: str, shape: tuple[int, ...], classes: int, morphs: list[str]) -> dict:
    torch.manual_seed(0)
    net = torchvision.models.get_model(net_name, weights=None, num_classes=classes)
    calibrate_bn(net, torch.randn(16, *shape, generator=torch.Generator().manual_seed(0)))
    change = sensitivity(net, shape)
    start = time.perf_counter()
    try:
        graph, weights, err = from_torch(net, shape)
    except MorphnasError as refusal:
        return {"net": net_name, "imported": False, "refusal": str(refusal), "sensitivity": change}
    row = {"net": net_name, "imported": True, "import_seconds": round(time.perf_counter() - start, 2),
           "import_max_rel_err": err, "sensitivity": change, "layers": sum(1 for _ in graph.edges()), "morphs": {}}
    if change <= SENSITIVITY_FLOOR:  # an exactness check could not fail on it
        return row
    weights = {k: v.double() if v.is_floating_point() else v for k, v in weights.items()}
    calibration = torch.randn(8, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name in morphs:
        row["morphs"][name] = morph_row(name, graph, weights, calibration)
    return row


def table(rows: list[dict], names: list[str]) -> str:
    lines = ["| network | imported | import error | import s | sensitivity | rounding noise f64 / f32 | "
             "f64 tolerance |" + "".join(f" {n} |" for n in names),
             "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(names)]
    for r in rows:
        if not r["imported"]:
            lines.append(f"| {r['net']} | no: {r['refusal']} | | | {r['sensitivity']:.2g} | | |" + " |" * len(names))
            continue
        cells = []
        for name in names:
            m = r["morphs"].get(name)
            if m is None:
                cells.append("not checked")  # the network is insensitive
                continue
            cells.append("0 sites" if not m["sites"] else f"{m['sites']}: {m['worst_rel_err']:.0e} / "
                         f"{m['worst_rel_err_float32']:.0e}" + ("" if m["exact"] else " (approx.)"))
        checked = list(r["morphs"].values())
        noise = (f"{max(m['noise'] for m in checked):.0e} / {max(m['noise_float32'] for m in checked):.0e} | "
                 f"{max(m['tolerance'] for m in checked):.0e}") if checked else " |"
        lines.append(f"| {r['net']} | yes ({r['layers']} layers) | {r['import_max_rel_err']:.1e} | "
                     f"{r['import_seconds']:.1f} | {r['sensitivity']:.2g} | {noise} |"
                     + "".join(f" {c} |" for c in cells))
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
               if m["claims_exact"] and m["exact"] and not m["within_tolerance"]]
        print(f"{net_name}: " + ("imported" if row["imported"] else f"refused: {row['refusal']}")
              + f"; sensitivity {row['sensitivity']:.2g}"
              + (" (at or below the floor: morphs not checked)" if row["sensitivity"] <= SENSITIVITY_FLOOR else "")
              + (f"; exact morphs over tolerance: {bad}" if bad else ""), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    imported = sum(r["imported"] for r in rows)
    stayed = all(m["within_tolerance"] for r in rows for m in r.get("morphs", {}).values()
                 if m["claims_exact"] and m["exact"])
    print(f"{imported} of {len(rows)} families import; every exact morph "
          + ("stays exact" if stayed else "does NOT stay exact")
          + " in float64 (1e-10, or ten times the network's rounding noise where that is larger)")
    print("cells: sites: worst float64 / float32 verifier error over the first, middle and last site")
    print(table(rows, args.morphs))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
