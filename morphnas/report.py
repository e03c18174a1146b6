"""A study's report: one self-contained HTML page with four figures, or its main figure as an image.

The HTML inlines plotly.js once and embeds the matplotlib drawings as base64 PNGs, so it opens
offline and fetches nothing. Static images are drawn with matplotlib (plotly's image export
needs Chrome).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import networkx as nx
import optuna
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Patch
from matplotlib.ticker import EngFormatter, PercentFormatter
from optuna.trial import FrozenTrial

from morphnas.errors import ConfigError, MorphnasError
from morphnas.ir import ArchGraph, Layer
from morphnas.search.record import TrialRecord, morph_text
from morphnas.search.study import best_trial, lineage, trial_checkpoint, trials_frame
from morphnas.train import load_checkpoint

HTML_SUFFIXES = (".html", ".htm")
IMAGE_SUFFIXES = (".png", ".svg", ".pdf")
TITLES = {
    "history": "Optimisation history",
    "pareto": "Validation error vs MACs",
    "lineage": "Lineage tree",
    "architecture": "Best architecture",
}
BEST_COLOUR = "#e45756"
FRONT_COLOUR = "#f58518"
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
# above the plot, right; every symbol the same size, so the best trial's star covers no other entry
LEGEND = {"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom", "itemsizing": "constant"}
LEGEND_MARKER = 70  # the matplotlib legend's marker size (points squared) for every entry, for the same reason
NARROW = 0.01  # a MACs axis spanning less than this fraction of its largest value is widened (see _macs_range)


def build_report(study: optuna.Study, path: str | Path) -> Path:
    """Write the report of ``study`` to ``path``: an HTML page (.html) or the error-vs-MACs figure (.png/.svg/.pdf)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in HTML_SUFFIXES + IMAGE_SUFFIXES:
        raise ConfigError(f"--out must end in .html, .png, .svg or .pdf, got {path.name!r}")
    frame = trials_frame(study)
    best = best_trial(study)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # as export does: missing folders are made
        if suffix in HTML_SUFFIXES:
            path.write_text(report_html(study, frame, best), encoding="utf-8")
        else:
            error_vs_macs_figure(frame, best.number, study.study_name).savefig(path, format=suffix[1:], dpi=150)
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror}") from None
    return path


# data -------------------------------------------------------------------------------------------


def completed(frame: pd.DataFrame) -> pd.DataFrame:
    """The completed trials, in trial order."""
    return frame[frame["state"] == "COMPLETE"].sort_values("number")


def pareto_mask(errors: list[float], costs: list[float]) -> list[bool]:
    """True for the points no other point dominates (lower or equal in both, lower in one)."""
    points = list(zip(errors, costs, strict=True))
    return [
        not any(e <= pe and c <= pc and (e < pe or c < pc) for e, c in points)
        for pe, pc in points
    ]


def _hover(row: Any) -> str:
    lines = [f"trial {row.number} ({row.state.lower()})", f"generation {_int(row.generation)}, rule {row.rule}"]
    if morph_text(row.morphs):
        lines.append(f"morph {morph_text(row.morphs)}")
    if _present(row.val_error):
        lines.append(f"val error {row.val_error:.2%}")
    if _present(row.params):
        lines.append(f"{int(row.params):,} params, {int(row.macs) / 1e6:.3f} M MACs")
    if _present(row.reason):
        lines.append(str(row.reason)[:90])
    return "<br>".join(html.escape(line) for line in lines)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _int(value: Any) -> int | None:
    return int(value) if _present(value) else None


# plotly figures ---------------------------------------------------------------------------------


def history_figure(frame: pd.DataFrame, best: int) -> go.Figure:
    """Validation error of each completed trial, of each pruned one that has one (halved out after
    a rung: hollow), the best so far (of the completed) and the best trial."""
    done = completed(frame)
    pruned = frame[(frame["state"] == "PRUNED") & frame["val_error"].notna()].sort_values("number")
    fig = go.Figure()
    fig.add_scatter(
        x=done["number"], y=done["val_error"], mode="markers", name="trial",
        marker={"size": 9, "color": "#4c78a8", "line": {"width": 1, "color": "#333"}},
        hovertext=[_hover(r) for r in done.itertuples()], hoverinfo="text",
    )
    if len(pruned):
        fig.add_scatter(
            x=pruned["number"], y=pruned["val_error"], mode="markers", name="pruned",
            marker={"size": 9, "symbol": "circle-open", "color": "#4c78a8", "line": {"width": 2}},
            hovertext=[_hover(r) for r in pruned.itertuples()], hoverinfo="text",
        )
    fig.add_scatter(
        x=done["number"], y=done["val_error"].cummin(), mode="lines", name="best so far",
        line={"shape": "hv", "color": "#333", "dash": "dot"}, hoverinfo="skip",
    )
    row = frame.loc[frame["number"] == best].iloc[0]
    fig.add_scatter(
        x=[best], y=[row.val_error], mode="markers", name=f"best (trial {best})",
        marker={"symbol": "star", "size": 18, "color": BEST_COLOUR, "line": {"width": 1, "color": "#333"}},
        hoverinfo="skip",
    )
    fig.update_layout(
        title=TITLES["history"], xaxis={"title": "trial", "dtick": max(1, math.ceil(len(frame) / 15))},
        yaxis={"title": "validation error", "tickformat": ".1%"},
        height=420, template="plotly_white", legend=LEGEND,
    )
    return fig


def pareto_figure(frame: pd.DataFrame, best: int) -> go.Figure:
    """Validation error against MACs for completed trials, with the Pareto front in both."""
    done = completed(frame)
    front = done[pareto_mask(list(done["val_error"]), list(done["macs"]))].sort_values(["macs", "val_error"])
    fig = go.Figure()
    fig.add_scatter(
        x=done["macs"], y=done["val_error"], mode="markers", name="trial",
        marker={"size": 9, "color": "#4c78a8", "opacity": 0.7},
        hovertext=[_hover(r) for r in done.itertuples()], hoverinfo="text",
    )
    fig.add_scatter(
        x=front["macs"], y=front["val_error"], mode="lines+markers+text", name="Pareto front",
        line={"shape": "hv", "color": FRONT_COLOUR, "width": 2},
        marker={"size": 12, "color": FRONT_COLOUR, "line": {"width": 1, "color": "#333"}},
        text=[f"#{n}" for n in front["number"]], textposition="top right",
        hovertext=[_hover(r) for r in front.itertuples()], hoverinfo="text",
    )
    row = frame.loc[frame["number"] == best].iloc[0]
    fig.add_scatter(
        x=[row.macs], y=[row.val_error], mode="markers", name=f"best (trial {best})",
        marker={"symbol": "star", "size": 20, "color": BEST_COLOUR, "line": {"width": 1, "color": "#333"}},
        hoverinfo="skip",
    )
    fig.update_layout(
        title=TITLES["pareto"],
        xaxis={"title": "multiply-accumulates (MACs)", "tickformat": "~s", "range": _macs_range(done["macs"])},
        yaxis={"title": "validation error", "tickformat": ".1%"}, height=480, template="plotly_white",
        legend=LEGEND,
    )
    return fig


def _macs_range(macs: pd.Series) -> list[float] | None:
    """The MACs axis's range when its values span less than :data:`NARROW` of the largest (all
    equal, say): 10 % either side, whose ticks read differently (plotly would tick a hair's width
    and print the same rounded label at every tick); None (automatic) otherwise."""
    if macs.empty or macs.max() - macs.min() >= NARROW * macs.max():
        return None
    return [0.9 * macs.min(), 1.1 * macs.max()]


def tree_positions(frame: pd.DataFrame) -> dict[int, tuple[float, float]]:
    """(generation, row) of each trial: leaves on consecutive rows, a parent midway between its children."""
    children: dict[int | None, list[int]] = defaultdict(list)
    for row in frame.sort_values("number").itertuples():
        children[_int(row.parent)].append(int(row.number))
    generation = {int(r.number): _int(r.generation) or 0 for r in frame.itertuples()}
    rows: dict[int, float] = {}
    leaves = 0
    stack: list[tuple[int, bool]] = [(root, False) for root in reversed(children[None])]
    while stack:  # iterative post-order, so deep lineages do not hit the recursion limit
        node, expanded = stack.pop()
        kids = children.get(node, [])
        if not kids:
            rows[node] = float(leaves)
            leaves += 1
        elif expanded:
            rows[node] = sum(rows[k] for k in kids) / len(kids)
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in reversed(kids))
    return {n: (generation[n], rows[n]) for n in rows}


def lineage_figure(frame: pd.DataFrame, best_path: list[int]) -> go.Figure:
    """Every trial at (generation, row), joined to its parent; the best lineage drawn bold."""
    pos = tree_positions(frame)
    on_path = set(zip(best_path, best_path[1:], strict=False))
    fig = go.Figure()
    for bold in (False, True):
        xs: list[float | None] = []
        ys: list[float | None] = []
        for row in frame.itertuples():
            parent = _int(row.parent)
            if parent is None or parent not in pos or ((parent, row.number) in on_path) != bold:
                continue
            (x0, y0), (x1, y1) = pos[parent], pos[row.number]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        fig.add_scatter(
            x=xs, y=ys, mode="lines", hoverinfo="skip", name="best lineage" if bold else "parent → child",
            line={"color": BEST_COLOUR if bold else "#aaa", "width": 4 if bold else 1.5},
        )
    done = completed(frame)
    fig.add_scatter(
        x=[pos[n][0] for n in done["number"]], y=[pos[n][1] for n in done["number"]],
        mode="markers+text", name="completed", text=[f"#{n}" for n in done["number"]], textposition="top center",
        marker={"size": 14, "color": done["val_error"], "colorscale": "RdYlGn", "reversescale": True,
                "line": {"width": 1, "color": "#333"},
                "colorbar": {"title": {"text": "val error"}, "tickformat": ".1%"}},
        hovertext=[_hover(r) for r in done.itertuples()], hoverinfo="text",
    )
    other = frame[frame["state"] != "COMPLETE"]
    if len(other):
        fig.add_scatter(
            x=[pos[n][0] for n in other["number"]], y=[pos[n][1] for n in other["number"]],
            mode="markers+text", name="failed / pruned", text=[f"#{n}" for n in other["number"]],
            textposition="top center", marker={"size": 11, "symbol": "x", "color": "#888"},
            hovertext=[_hover(r) for r in other.itertuples()], hoverinfo="text",
        )
    leaves = max((y for _, y in pos.values()), default=0) + 1
    fig.update_layout(
        title=TITLES["lineage"], height=max(380, 160 + 44 * leaves), template="plotly_white",
        xaxis={"title": "generation", "dtick": 1}, yaxis={"visible": False, "range": [leaves - 0.4, -0.6]},
        legend=LEGEND,
    )
    return fig


# matplotlib figures -----------------------------------------------------------------------------


def error_vs_macs_figure(frame: pd.DataFrame, best: int, study_name: str) -> Figure:
    """The main figure as a matplotlib drawing: completed trials, the Pareto front, the best trial."""
    done = completed(frame)
    front = done[pareto_mask(list(done["val_error"]), list(done["macs"]))].sort_values(["macs", "val_error"])
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(done["macs"], done["val_error"], s=36, color="#4c78a8", alpha=0.7, label="trial")
    ax.step(front["macs"], front["val_error"], where="post", color=FRONT_COLOUR, lw=2)
    ax.scatter(front["macs"], front["val_error"], s=70, color=FRONT_COLOUR, edgecolor="#333", zorder=3,
               label="Pareto front")
    for row in front.itertuples():
        ax.annotate(f"#{row.number}", (row.macs, row.val_error), textcoords="offset points", xytext=(6, 6),
                    fontsize=9)
    row = frame.loc[frame["number"] == best].iloc[0]
    ax.scatter([row.macs], [row.val_error], s=260, marker="*", color=BEST_COLOUR, edgecolor="#333", zorder=4,
               label=f"best (trial {best})")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=1))
    ax.set_xlabel("multiply-accumulates (MACs)")
    ax.set_ylabel("validation error")
    ax.set_title(f"{TITLES['pareto']}: study {study_name}")
    ax.grid(alpha=0.3)
    span = _macs_range(done["macs"])
    if span is not None:
        ax.set_xlim(*span)
    for handle in ax.legend(labelspacing=0.8).legend_handles:
        handle.set_sizes([LEGEND_MARKER])
    return fig


# every layer type of morphnas.ir.layers (tests/test_report.py checks): the same colour for a family
LAYER_COLOURS = {
    "conv2d": "#c6dbef", "batchnorm2d": "#e5e5e5", "batchnorm1d": "#e5e5e5", "dropout": "#e5e5e5",
    "activation": "#d9f0d3", "pact": "#a6dba0", "pool2d": "#fdd0a2", "adaptive_avg_pool2d": "#fdd0a2",
    "global_avg_pool": "#fdd0a2", "linear": "#dadaeb", "identity": "#fff2ae", "shortcut_a": "#fff2ae",
    "flatten": "#fff2ae", "channel_shuffle": "#fcbba1", "channel_slice": "#fcbba1",
}
CHANGE_STYLES = {"new": ("#d62728", 2.4), "changed": ("#ff7f0e", 2.4), "same": ("#555", 0.8)}


def describe_layer(layer: Layer) -> str:
    """A short human description of a layer spec, e.g. ``conv 3×3 16→32``, ``conv 3×3 64→64 g64 d2``
    (grouped, dilated), ``channel shuffle g2``, ``channels 58:116``."""
    d = layer.to_dict()
    kind = d["type"]
    stride = f" /{d['stride']}" if d.get("stride", 1) != 1 else ""
    if kind == "conv2d":
        groups = f" g{d['groups']}" if d["groups"] != 1 else ""
        dilation = f" d{d['dilation']}" if d["dilation"] != 1 else ""
        return (f"conv {d['kernel_size']}×{d['kernel_size']} {d['in_channels']}→{d['out_channels']}{stride}{groups}"
                f"{dilation}")
    if kind.startswith("batchnorm"):
        return f"BN {d['num_features']}"
    if kind == "activation":
        return d["kind"]
    if kind == "pact":
        return f"P-{d['kind']}"
    if kind == "identity":
        return "identity" + (f" ×{d['scale']:g}" if d["scale"] != 1 else "")
    if kind == "shortcut_a":
        return f"shortcut A {d['in_channels']}→{d['out_channels']}{stride}"
    if kind == "pool2d":
        return f"{d['mode']} pool {d['kernel_size']}×{d['kernel_size']}{stride}"
    if kind == "adaptive_avg_pool2d":
        return f"adaptive avg pool to {d['size']}×{d['size']}"
    if kind == "channel_shuffle":
        return f"channel shuffle g{d['groups']}"
    if kind == "channel_slice":
        return f"channels {d['start']}:{d['stop']}"
    if kind == "linear":
        return f"linear {d['in_features']}→{d['out_features']}"
    if kind == "dropout":
        return f"dropout {d['p']:g}"
    return kind.replace("_", " ")


def _layer_changes(graph: ArchGraph, seed: ArchGraph) -> dict[str, str]:
    before = {e.name: e.layer for e in seed.edges()}
    return {
        e.name: "new" if e.name not in before else "same" if before[e.name] == e.layer else "changed"
        for e in graph.edges()
    }


def _drawing_graph(graph: ArchGraph) -> nx.DiGraph:
    """Layers as nodes, plus the input, the output and every merging blob; edges follow the data.

    Nodes are ``("layer", name)`` or ``("blob", name)``: a layer and a blob may share a name.
    """
    drawn = nx.DiGraph()
    shape = {b: "×".join(map(str, s)) for b, s in graph.shapes().items()}
    source, sink = graph.source, graph.sink
    visible = {source, sink} | {b for b in graph.blobs() if len(graph.in_edges(b)) > 1}
    for blob in graph.topological_blobs():
        if blob == source:
            drawn.add_node(("blob", blob), label=f"input {shape[blob]}")
        elif blob == sink:
            drawn.add_node(("blob", blob), label=f"output {shape[blob]}")
        elif blob in visible:
            drawn.add_node(("blob", blob), label={"add": "+", "mul": "×"}.get(graph.merge(blob), "concat"), merge=True)
        for e in graph.in_edges(blob):
            drawn.add_node(("layer", e.name), label=f"{e.name}: {describe_layer(e.layer)}  → {shape[e.dst]}",
                           type=e.layer.type)
    for e in graph.edges():
        src = ("blob", e.src) if e.src in visible else ("layer", graph.in_edges(e.src)[0].name)
        drawn.add_edge(src, ("layer", e.name))
        if e.dst in visible:
            drawn.add_edge(("layer", e.name), ("blob", e.dst))
    return drawn


def _columns(drawn: nx.DiGraph, rows: list[list[Any]], gap: float) -> dict[Any, float]:
    """Each node under the mean of its predecessors, pushed apart to ``gap`` within its row."""
    x: dict[Any, float] = {}
    for row in rows:
        wanted = {n: sum(x[p] for p in drawn.pred[n]) / len(drawn.pred[n]) if drawn.pred[n] else 0.0 for n in row}
        row.sort(key=lambda n: wanted[n])
        placed: list[float] = []
        for node in row:
            placed.append(wanted[node] if not placed else max(wanted[node], placed[-1] + gap))
        shift = sum(wanted.values()) / len(row) - sum(placed) / len(row)
        x.update({node: p + shift for node, p in zip(row, placed, strict=True)})
    return x


def architecture_figure(graph: ArchGraph, changes: dict[str, str]) -> Figure:
    """The network top to bottom, one row per topological generation, new and changed layers outlined."""
    drawn = _drawing_graph(graph)
    rows = [sorted(g, key=list(drawn).index) for g in nx.topological_generations(drawn)]
    col_w, row_h, box_w, box_h = 3.4, 0.62, 3.1, 0.34
    x = _columns(drawn, rows, col_w)
    y = {node: -r * row_h for r, row in enumerate(rows) for node in row}
    left, right = min(x.values()) - box_w / 2 - 0.2, max(x.values()) + box_w / 2 + 0.2
    height = len(rows) * row_h + 0.9
    fig = Figure(figsize=(right - left, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(left, right)
    ax.set_ylim(-(len(rows) - 1) * row_h - 0.4, 0.9)
    ax.set_axis_off()
    for src, dst in drawn.edges:
        ax.annotate(
            "", xy=(x[dst], y[dst] + box_h / 2), xytext=(x[src], y[src] - box_h / 2),
            arrowprops={"arrowstyle": "-|>", "color": "#666", "lw": 1, "shrinkA": 0, "shrinkB": 0},
        )
    for node, data in drawn.nodes(data=True):
        if data.get("merge"):
            ax.text(x[node], y[node], data["label"], ha="center", va="center", fontsize=9, fontweight="bold",
                    bbox={"boxstyle": "circle,pad=0.25", "facecolor": "white", "edgecolor": "#555"})
            continue
        edge, lw = CHANGE_STYLES[changes.get(node[1], "same") if node[0] == "layer" else "same"]
        face = LAYER_COLOURS.get(data.get("type", ""), "#f4f4f4")
        ax.add_patch(FancyBboxPatch((x[node] - box_w / 2, y[node] - box_h / 2), box_w, box_h,
                                    boxstyle="round,pad=0.0,rounding_size=0.06", facecolor=face,
                                    edgecolor=edge, linewidth=lw))
        label = data["label"]  # long generated layer names get a smaller font to stay inside the box
        ax.text(x[node], y[node], label, ha="center", va="center", fontsize=min(8.0, 8.0 * 46 / len(label)))
    ax.legend(
        handles=[Patch(facecolor="white", edgecolor=CHANGE_STYLES[k][0], linewidth=2, label=f"{k} since the seed")
                 for k in ("new", "changed") if k in changes.values()] or [Patch(color="white", label="as the seed")],
        loc="upper right", fontsize=8, frameon=False,
    )
    return fig


def _png(fig: Figure, dpi: float = 110) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def architecture_section(study: optuna.Study, best: FrozenTrial, seed: FrozenTrial) -> str:
    """The best trial's architecture as an embedded PNG, or a note saying why it cannot be drawn."""
    try:
        arch, _, _ = load_checkpoint(trial_checkpoint(study, best))
        seed_arch, _, _ = load_checkpoint(trial_checkpoint(study, seed))
        graph, seed_graph = ArchGraph.from_json(arch), ArchGraph.from_json(seed_arch)
    except MorphnasError as err:
        return f'<p class="note" id="fig-architecture">Cannot draw the architecture: {html.escape(str(err))}</p>'
    fig = architecture_figure(graph, _layer_changes(graph, seed_graph))
    dpi = min(110.0, 16000 / fig.get_figheight())  # keep very deep networks within a sane image height
    return (f'<img id="fig-architecture" alt="{TITLES["architecture"]}" '
            f'src="data:image/png;base64,{_png(fig, dpi)}">')


# the page ---------------------------------------------------------------------------------------


def _morph_text(trial: FrozenTrial) -> str:
    record = TrialRecord.from_trial(trial)
    return record.morph_text or record.rule or "seed"


def _summary(study: optuna.Study, frame: pd.DataFrame, best: FrozenTrial, path: list[FrozenTrial]) -> str:
    counts = frame["state"].value_counts()
    space = study.user_attrs.get("space", {})
    test = study.user_attrs.get(f"test_error/{best.number}")
    a = TrialRecord.from_trial(best)
    facts = [
        ("objectives", ", ".join(space.get("objectives", [])) or f"{len(study.directions)} objective(s)"),
        ("trials", ", ".join(f"{n} {state.lower()}" for state, n in counts.items())),
        ("best trial", f"{best.number} (generation {a.generation})"),
        ("validation error", f"{best.values[0]:.2%}"
         + (f" (seed {path[0].values[0]:.2%})" if path[0].values else "")),
        ("test error", "not measured" if test is None else f"{test:.2%}"),
        ("size", f"{a.params or 0:,} params, {(a.macs or 0) / 1e6:.3f} M MACs"),
        ("lineage", " → ".join(f"#{t.number} {_morph_text(t)}" for t in path)),
    ]
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts)
    return f'<dl class="summary">{items}</dl>'


STYLE = """
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #222; padding: 0 16px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.meta { color: #666; font-size: 0.9em; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 4px 16px; font-size: 0.95em; }
dl.summary dt { font-weight: bold; } dl.summary dd { margin: 0; }
section { border-top: 1px solid #ddd; }
img { max-width: 100%; display: block; margin: 8px auto; } .note { color: #a33; }
"""


def report_html(study: optuna.Study, frame: pd.DataFrame, best: FrozenTrial) -> str:
    """The whole report page as one string."""
    path = lineage(study, best.number)
    figures = [history_figure(frame, best.number), pareto_figure(frame, best.number),
               lineage_figure(frame, [t.number for t in path])]
    divs = [
        fig.to_html(full_html=False, include_plotlyjs=i == 0, div_id=f"fig-{key}", config=PLOTLY_CONFIG)
        for i, (key, fig) in enumerate(zip(("history", "pareto", "lineage"), figures, strict=True))
    ]
    sections = [
        ("history", "Validation error of every completed trial, with the best so far.", divs[0]),
        ("pareto", "Completed trials by cost; the Pareto front (no trial is both cheaper and better) in orange.",
         divs[1]),
        ("lineage", "Each child joined to its parent, by generation; the best trial's lineage in red.", divs[2]),
        ("architecture", f"Trial {best.number}, top to bottom; layers new or changed since the seed are outlined.",
         architecture_section(study, best, path[0])),
    ]
    body = "".join(
        f'<section id="{key}"><h2>{TITLES[key]}</h2><p class="meta">{html.escape(text)}</p>{content}</section>'
        for key, text, content in sections
    )
    name = html.escape(study.study_name)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>morphnas report: {name}</title>'
        f"<style>{STYLE}</style></head><body><h1>morphnas report: study {name}</h1>"
        f'<p class="meta">generated {datetime.now():%Y-%m-%d %H:%M}</p>'
        f"{_summary(study, frame, best, path)}{body}</body></html>\n"
    )
