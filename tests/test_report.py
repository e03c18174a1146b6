"""``morphnas report`` / ``build_report`` and ``morphnas dashboard`` on real tiny studies."""

import base64
import re
import shutil
import sqlite3
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import optuna_dashboard
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from test_cli_studies import assert_one_line_error, make_studies, run, with_failures

import morphnas.ir.layers
from morphnas.errors import ConfigError
from morphnas.ir import (
    LAYER_TYPES,
    AdaptiveAvgPool2d,
    ChannelShuffle,
    ChannelSlice,
    Conv2d,
    Flatten,
    Pool2d,
    load_arch,
)
from morphnas.report import (
    LAYER_COLOURS,
    TITLES,
    _drawing_graph,
    architecture_figure,
    build_report,
    describe_layer,
    error_vs_macs_figure,
    history_figure,
    pareto_figure,
    pareto_mask,
    tree_positions,
)
from morphnas.search import best_trial, load_study, open_storage
from morphnas.search.study import COLUMNS, default_storage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return make_studies(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def report(workdir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = run("report", "tinymo", "--workdir", str(workdir), "--out", str(out))
    assert result.output.strip() == f"wrote {out}"
    return out


class Page(HTMLParser):
    """Every tag's attributes, the ids, and the text outside scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if not self._in_script:
            self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def non_blank(png: Path) -> tuple[float, float]:
    """Fraction of pixels that are not near-white, and of strongly coloured ones."""
    image = matplotlib.image.imread(png)[..., :3]
    ink = (image < 0.9).any(axis=-1).mean()
    colour = ((image.max(axis=-1) - image.min(axis=-1)) > 0.3).mean()
    return float(ink), float(colour)


def test_html_report_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    page = parse(report)
    for tag, attrs in page.tags:
        for key in ("src", "href", "data", "action"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, key, value[:80])
        if tag == "script":
            assert "src" not in attrs, attrs  # every script inline
        if tag == "link":
            pytest.fail(f"the report links an external resource: {attrs}")
    assert text.count("plotly.js v") == 1  # the library is inlined once
    assert not re.search(r"@import|url\(\s*['\"]?https?:", text)


def test_html_report_has_the_four_figures(report, workdir):
    page = parse(report)
    ids = {attrs.get("id") for _, attrs in page.tags}
    assert {"fig-history", "fig-pareto", "fig-lineage", "fig-architecture"} <= ids
    headings = " ".join(page.text)
    for title in TITLES.values():
        assert title in headings
    text = report.read_text(encoding="utf-8")
    assert text.count("Plotly.newPlot") == 3
    study = load_study(open_storage(default_storage(workdir)), "tinymo")
    best = best_trial(study)
    assert f"best (trial {best.number})" in text and "Pareto front" in text
    for t in study.trials:
        assert f"trial {t.number} (" in text  # every trial has a hover label
    img = next(attrs for tag, attrs in page.tags if tag == "img" and attrs.get("id") == "fig-architecture")
    png = base64.b64decode(img["src"].removeprefix("data:image/png;base64,"))
    assert png.startswith(b"\x89PNG")


def test_html_report_renders_in_headless_chromium(report, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed: cannot render the report headless (apt-get install chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--hide-scrollbars", "--window-size=1280,3200", "--virtual-time-budget=5000", f"--screenshot={shot}",
         report.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    ink, colour = non_blank(shot)
    assert ink > 0.03 and colour > 0.005, (ink, colour)


def test_png_out_draws_the_error_vs_macs_figure(workdir, tmp_path):
    out = tmp_path / "front.png"
    run("report", "tiny", "--workdir", str(workdir), "--out", str(out))
    ink, colour = non_blank(out)
    assert ink > 0.02 and colour > 0.002, (ink, colour)


def test_report_errors_are_one_line_exit_2(workdir, tmp_path):
    w = ["--workdir", str(workdir)]
    assert_one_line_error(run("report", "nope", *w, "--out", str(tmp_path / "r.html"), ok=False), "no study named")
    assert_one_line_error(run("report", "tiny", *w, "--out", str(tmp_path / "r.txt"), ok=False), "--out must end")
    (tmp_path / "file.txt").write_text("")
    under_a_file = tmp_path / "file.txt" / "r.html"
    assert_one_line_error(run("report", "tiny", *w, "--out", str(under_a_file), ok=False), "cannot write")


def test_report_makes_missing_folders_as_export_does(workdir, tmp_path):
    out = tmp_path / "missing" / "dir" / "r.png"
    assert run("report", "tiny", "--workdir", str(workdir), "--out", str(out)).output.strip() == f"wrote {out}"
    assert out.stat().st_size > 0


def test_report_draws_failed_and_pruned_children_in_the_lineage(workdir, tmp_path):
    out = tmp_path / "r.html"
    run("report", "tiny", "--workdir", str(with_failures(workdir, tmp_path)), "--out", str(out))
    text = out.read_text(encoding="utf-8")
    assert "failed \\u002f pruned" in text  # the legend entry; plotly escapes "/" in its JSON
    assert "trial 6 (fail)" in text and "trial 7 (pruned)" in text
    assert "TrainingDivergedError: nan" in text


def test_report_without_checkpoints_still_has_the_plots(workdir, tmp_path):
    """A study read from a shared database on a machine without its work directory."""
    shutil.copy(workdir / "morphnas.db", tmp_path / "morphnas.db")
    with sqlite3.connect(tmp_path / "morphnas.db") as db:
        db.execute("UPDATE study_user_attributes SET value_json = ? WHERE key = 'workdir'",
                   (f'"{tmp_path / "gone"}"',))
    study = load_study(open_storage(default_storage(tmp_path)), "tiny")
    out = build_report(study, tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    assert "Cannot draw the architecture: no checkpoint at" in text and text.count("Plotly.newPlot") == 3
    with pytest.raises(ConfigError, match="--out must end"):
        build_report(study, tmp_path / "r.jpg")


def test_dashboard_serves_the_resolved_storage(workdir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: calls.append((storage, kw)))
    result = run("dashboard", "--workdir", str(workdir), "--port", "8765", "--host", "0.0.0.0")
    assert "http://0.0.0.0:8765/" in result.output
    [(storage, kw)] = calls
    assert kw == {"host": "0.0.0.0", "port": 8765}
    assert storage.url == default_storage(workdir)
    assert {s.study_name for s in storage.get_all_studies()} == {"tiny", "tinymo"}
    assert_one_line_error(run("dashboard", "--workdir", str(tmp_path), ok=False), "no study database")
    assert len(calls) == 1


def test_pareto_mask_keeps_ties_and_drops_dominated_points():
    errors = [0.10, 0.05, 0.05, 0.20, 0.05, 0.02]
    costs = [100, 200, 200, 50, 300, 900]
    assert pareto_mask(errors, costs) == [True, True, True, True, False, True]


def test_tree_positions_put_parents_between_children():
    frame = pd.DataFrame({"number": [0, 1, 2, 3, 4], "parent": [None, 0, 0, 1, 1], "generation": [0, 1, 1, 2, 2]})
    pos = tree_positions(frame)
    assert pos[3] == (2, 0.0) and pos[4] == (2, 1.0) and pos[2] == (1, 2.0)
    assert pos[1] == (1, 0.5) and pos[0] == (0, 1.25)


def test_architecture_drawing_shows_merges_of_a_residual_network():
    graph = load_arch("resnet20", (3, 32, 32), 10)
    drawn = _drawing_graph(graph)
    merges = [n for n, data in drawn.nodes(data=True) if data.get("merge")]
    assert len(merges) == 9  # one addition per residual block
    assert drawn.number_of_nodes() == sum(1 for _ in graph.edges()) + 2 + 9
    fig = architecture_figure(graph, {"s1b0_1_conv": "changed", "s3b2_2_bn": "new"})
    assert fig.get_figheight() > 20 and np.isfinite(fig.get_figwidth())


def test_every_layer_type_has_a_colour_and_says_its_dilation_groups_and_slice():
    """The drawing colours each layer type of morphnas.ir.layers (no colour is left for a type that is gone),
    and a layer's label shows what sets its output apart: a conv's dilation and groups, a shuffle's groups,
    a slice's channels, an adaptive pool's size."""
    own = {kind for kind, cls in LAYER_TYPES.items() if cls.__module__ == morphnas.ir.layers.__name__}
    assert set(LAYER_COLOURS) == own
    assert describe_layer(Conv2d(64, 64, 3, padding=2, groups=64, dilation=2)) == "conv 3×3 64→64 g64 d2"
    assert describe_layer(Conv2d(16, 32, 3, stride=2, padding=1)) == "conv 3×3 16→32 /2"
    assert describe_layer(ChannelShuffle(groups=2)) == "channel shuffle g2"
    assert describe_layer(ChannelSlice(start=58, stop=116)) == "channels 58:116"
    assert describe_layer(AdaptiveAvgPool2d(size=7)) == "adaptive avg pool to 7×7"
    assert describe_layer(Pool2d("avg", 3, 2, 1)) == "avg pool 3×3 /2"
    assert describe_layer(Flatten()) == "flatten"


def frame_of(*trials: tuple[str, float | None, int]) -> pd.DataFrame:
    """A trials frame (as trials_frame gives) of (state, val error, MACs) rows, trial 0 the seed."""
    rows = [{**dict.fromkeys(COLUMNS), "number": n, "state": state, "generation": n, "parent": n - 1 if n else None,
             "rule": "widen" if n else "seed", "val_error": error, "params": 1000, "macs": macs}
            for n, (state, error, macs) in enumerate(trials)]
    return pd.DataFrame(rows, columns=COLUMNS)


def test_equal_macs_get_an_axis_whose_ticks_differ():
    frame = frame_of(*[("COMPLETE", 0.10 - 0.01 * n, 80_000) for n in range(5)])
    assert pareto_figure(frame, best=4).layout.xaxis.range == (72_000, 88_000)  # not a hair's width around 80k
    ax = error_vs_macs_figure(frame, 4, "s").axes[0]
    FigureCanvasAgg(ax.figure).draw()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert ax.get_xlim() == (72_000, 88_000) and len(set(labels)) == len(labels) >= 3, labels
    spread = frame_of(("COMPLETE", 0.1, 40_000), ("COMPLETE", 0.05, 80_000))
    assert pareto_figure(spread, best=1).layout.xaxis.range is None  # a real spread is left to autorange


def test_every_legend_symbol_has_one_size_so_the_star_covers_none():
    frame = frame_of(("COMPLETE", 0.1, 40_000), ("COMPLETE", 0.05, 80_000), ("COMPLETE", 0.08, 60_000))
    legend = error_vs_macs_figure(frame, 1, "s").axes[0].get_legend()
    assert [h.get_sizes()[0] for h in legend.legend_handles] == [70, 70, 70]
    assert pareto_figure(frame, best=1).layout.legend.itemsizing == "constant"
    assert history_figure(frame, best=1).layout.legend.itemsizing == "constant"


def test_the_history_shows_pruned_trials_that_have_a_validation_error():
    frame = frame_of(("COMPLETE", 0.1, 40_000), ("PRUNED", 0.07, 50_000), ("PRUNED", None, 50_000),
                     ("COMPLETE", 0.05, 80_000))
    traces = {trace.name: trace for trace in history_figure(frame, best=3).data}
    assert list(traces["pruned"].x) == [1] and list(traces["pruned"].y) == [0.07]  # trial 2 has no error to draw
    assert list(traces["trial"].x) == [0, 3] and list(traces["best so far"].y) == [0.1, 0.05]
