"""Progress inside a phase: ``morphnas search`` shows each running child's epoch, the phase's and
the budget's time left, live in a terminal and one line per epoch in a pipe."""

from __future__ import annotations

import io

from rich.console import Console

from morphnas.cli.output import duration, plural
from morphnas.cli.search import EventLog, LiveView


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def epoch(trial: int, n: int, error: float, elapsed: float, budget: float | None, of: float | None = None) -> dict:
    return {"trial": trial, "epoch": n, "epochs": of, "val_error": error, "elapsed": elapsed, "budget": budget}


def test_durations_and_plurals_read_as_words():
    assert [duration(s) for s in (0.4, 42, 185, 3725)] == ["0 s", "42 s", "3 min 05 s", "1 h 02 min"]
    assert [plural(n, "step") for n in (0, 1, 2)] == ["0 steps", "1 step", "2 steps"]
    assert [plural(n, "epoch") for n in (0.5, 1.0, 4.0)] == ["0.5 epochs", "1 epoch", "4 epochs"]
    assert plural(1, "child", "children") == "1 child" and plural(3, "child", "children") == "3 children"


def test_a_pipe_gets_one_line_per_epoch_with_the_phase_and_budget_left(capsys):
    clock = Clock()
    log = EventLog(clock)
    log("seed", {"trial": 0, "arch": "cnn", "epochs": 4, "seconds": 100.0})
    clock.now += 20
    log("epoch", epoch(0, 1, 0.10, 25.0, 400.0, of=4))
    clock.now += 20  # 20 s an epoch: the 2 epochs left take 40 s, before the phase's 60 s run out
    log("epoch", epoch(0, 2, 0.05, 45.0, 400.0, of=4))
    log("done", {"trial": 0, "status": "ok", "val_error": 0.05, "best": 0.05})
    log("generation", {"generation": 1, "children": 2, "epochs": 1.5, "seconds": 150.0})
    log("child", {"trial": 1, "parent": 0, "rule": "widen"})
    log("child", {"trial": 2, "parent": 0, "rule": "deepen"})
    clock.now += 65
    log("epoch", epoch(2, 1, 0.04, 110.0, 400.0, of=1.5))
    assert capsys.readouterr().out.splitlines() == [
        "training seed cnn (100 s, at most 4 epochs) as trial 0",
        # 4 epochs at 20 s each would take 80 s, the phase's 100 s leave 80: 60 s left either way
        "  trial 0: epoch 1 of 4, val error 10.00%, 20 s in; seed ~1 min 00 s left; "
        "search 25 s of 6 min 40 s, 6 min 15 s left",
        "  trial 0: epoch 2 of 4, val error 5.00%, 40 s in; seed ~40 s left; "
        "search 45 s of 6 min 40 s, 5 min 55 s left",
        "  trial 0 ok, val error 5.00% (best 5.00%)",
        "generation 1: 2 children, 1.5 epochs each, ~2 min 30 s planned",
        "  trial 1: widen of trial 0",
        "  trial 2: deepen of trial 0",
        # the generation's planned 150 s less the 65 s gone; a half epoch at the end counts as one
        "  trial 2: epoch 1 of 2, val error 4.00%, 1 min 05 s in; generation 1 ~1 min 25 s left; "
        "search 1 min 50 s of 6 min 40 s, 4 min 50 s left",
    ]


def test_without_a_time_budget_the_final_phase_is_timed_by_its_epochs(capsys):
    clock = Clock()
    log = EventLog(clock)
    log("final", {"trial": 5, "parent": 3, "epochs": 3, "seconds": None})
    clock.now += 30
    log("epoch", epoch(5, 1, 0.02, 200.0, None, of=3))
    assert capsys.readouterr().out.splitlines()[-1] == (
        "  trial 5: epoch 1 of 3, val error 2.00%, 30 s in; final phase ~1 min 00 s left; search 3 min 20 s, "
        "no time budget")


def test_an_epoch_of_unknown_count_and_a_generation_without_a_plan_say_no_more_than_they_know(capsys):
    clock = Clock()
    log = EventLog(clock)
    log("generation", {"generation": 3, "children": 1, "epochs": 2, "seconds": None})
    log("child", {"trial": 9, "parent": 4, "rule": "widen"})
    clock.now += 10
    log("epoch", epoch(9, 1, 0.03, 50.0, None))
    assert capsys.readouterr().out.splitlines() == [
        "generation 3: 1 child, 2 epochs each",
        "  trial 9: widen of trial 4",
        "  trial 9: epoch 1, val error 3.00%, 10 s in; generation 3; search 50 s, no time budget",
    ]


def render(view: LiveView) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(view._view())
    return console.file.getvalue()


def test_the_live_view_shows_a_line_per_running_child_until_it_ends():
    clock = Clock()
    view = LiveView(Console(file=io.StringIO(), width=200), clock)
    with view.live:
        view("generation", {"generation": 2, "children": 2, "epochs": 4, "seconds": 300.0})
        assert "generation 2: 2 children, 4 epochs each, ~5 min 00 s planned" in render(view)
        view("child", {"trial": 7, "parent": 4, "rule": "widen"})
        view("child", {"trial": 8, "parent": 4, "rule": "deepen"})
        clock.now += 12
        view("epoch", epoch(7, 3, 0.0125, 130.0, 600.0, of=4))
        shown = render(view)
        assert "  trial 7: epoch 3 of 4, val error 1.25%, 12 s in" in shown
        assert "  trial 8: first epoch, 12 s in" in shown
        assert "generation 2 ~4 min 48 s left; search 2 min 10 s of 10 min 00 s, 7 min 50 s left" in shown
        clock.now += 5  # the clock runs on between epochs: the live view's refresh shows it
        assert "generation 2 ~4 min 43 s left; search 2 min 15 s of 10 min 00 s, 7 min 45 s left" in render(view)
        view("done", {"trial": 7, "status": "ok", "val_error": 0.012, "best": 0.012})
        shown = render(view)
    assert "trial 7: epoch" not in shown and "trial 8: first epoch" in shown
    assert "│ 2          │ 1                │ 1" in shown  # generation 2, one child running, one finished


def test_the_live_view_says_a_note_once_above_its_table():
    """A note (how a torchvision seed was fitted to the data set) is printed once, where it stays; the table
    below it is redrawn."""
    out = io.StringIO()
    view = LiveView(Console(file=out, width=200, color_system=None), Clock())
    with view.live:
        view("note", {"message": "seed nets:grey[2]: grey input: conv1's RGB kernels summed into one channel"})
        view("seed", {"trial": 0, "arch": "torchvision:resnet18", "epochs": 2, "seconds": None})
    printed = out.getvalue()
    assert printed.count("seed nets:grey[2]: grey input: conv1's RGB kernels summed into one channel") == 1
    assert printed.index("grey input") < printed.rindex("morphnas search")  # above the last table drawn
    assert "grey input" not in render(view)
