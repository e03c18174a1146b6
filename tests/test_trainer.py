"""The training loop: learning, determinism, schedules, weight decay, divergence, callbacks."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
from torch import nn

from morphnas.errors import ConfigError, DataError, TrainingDivergedError
from morphnas.train import (
    Split,
    TrainConfig,
    device_settings,
    evaluate,
    load_dataset,
    train,
)
from morphnas.train.trainer import _fit_to_time, lr_at, param_groups, validate


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", synthetic_shape=(1, 8, 8), synthetic_classes=4, synthetic_size=560)


def small_cnn(num_classes: int = 10, channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.PReLU(8, init=1.0),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def mlp(inputs: int, num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, 32), nn.ReLU(), nn.Linear(32, num_classes))


def test_trains_a_cnn_on_digits_and_reports_fractions(digits) -> None:
    model = small_cnn()
    before = evaluate(model, digits.val)
    result = train(model, digits, TrainConfig(epochs=4, batch_size=64), evaluate_test=True)
    assert before > 0.5
    assert result.val_error < 0.1 and result.test_error is not None and result.test_error < 0.1
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.val_error == evaluate(model, digits.val)  # trained in place
    assert result.epochs == 4 and result.seconds > 0
    assert all(0 <= r.val_error <= 1 for r in result.history)


def test_test_error_only_on_request(synthetic) -> None:
    result = train(mlp(64, 4), synthetic, TrainConfig(epochs=1))
    assert result.test_error is None


def test_same_seed_same_weights_and_history(digits) -> None:
    def run(seed: int) -> tuple[dict, list]:
        model = small_cnn()
        result = train(model, digits, TrainConfig(epochs=1, seed=seed, max_train_batches=8))
        return model.state_dict(), [(r.train_loss, r.val_error) for r in result.history]

    (w0, h0), (w1, h1), (w2, _) = run(3), run(3), run(4)
    assert h0 == h1
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not all(torch.equal(w0[k], w2[k]) for k in w0)


def test_augmented_runs_are_deterministic_too() -> None:
    data = load_dataset("synthetic", synthetic_shape=(3, 32, 32), synthetic_classes=3, synthetic_size=120)
    data = dataclasses.replace(data, augment="crop_flip")

    def run() -> dict:
        model = small_cnn(3, channels=3)
        train(model, data, TrainConfig(epochs=2, batch_size=16))
        return model.state_dict()

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


class Counting(nn.Module):
    """Counts training-mode forward calls (= optimizer steps) and their batch sizes."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.batches.append(len(x))
        return self.inner(x)


def test_fractional_epochs_and_batch_cap(synthetic) -> None:
    # 392 train images, batch 32: 12 full batches per epoch (the partial one is dropped)
    model = Counting(mlp(64, 4))
    result = train(model, synthetic, TrainConfig(epochs=1.5, batch_size=32))
    assert model.batches == [32] * 18
    assert len(result.history) == 2 and result.epochs == 1.5
    capped = Counting(mlp(64, 4))
    result = train(capped, synthetic, TrainConfig(epochs=3, batch_size=32, max_train_batches=5))
    assert capped.batches == [32] * 15 and result.epochs == 3
    whole = Counting(mlp(64, 4))
    train(whole, synthetic, TrainConfig(epochs=1, batch_size=10_000))
    assert whole.batches == [len(synthetic.train)]


def test_on_epoch_gets_each_report_and_may_stop_the_run(synthetic) -> None:
    seen = []
    result = train(mlp(64, 4), synthetic, TrainConfig(epochs=3), on_epoch=seen.append)
    assert seen == result.history and len(seen) == 3

    class Pruned(Exception):
        pass

    def prune(report) -> None:
        if report.epoch == 2:
            raise Pruned

    model = Counting(mlp(64, 4))
    with pytest.raises(Pruned):
        train(model, synthetic, TrainConfig(epochs=5, batch_size=100), on_epoch=prune)
    assert len(model.batches) == 2 * 3


class Poisoned(Counting):
    """Gives NaN logits from its ``bad``-th training step on."""

    def __init__(self, inner: nn.Module, bad: int) -> None:
        super().__init__(inner)
        self.bad = bad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * math.nan if self.training and len(self.batches) >= self.bad else out


def test_divergence_raises_at_the_end_of_its_epoch_naming_the_first_bad_step(synthetic) -> None:
    """Losses stay on the device during an epoch (one host sync per epoch), so the epoch runs out."""
    model = Poisoned(mlp(64, 4), bad=5)
    with pytest.raises(TrainingDivergedError, match=r"loss nan at epoch 1, step 5 of 60 \(lr 0.1\)"):
        train(model, synthetic, TrainConfig(epochs=5, batch_size=32, lr=0.1))
    assert len(model.batches) == 12  # the first epoch ran to its end, no second one began
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step \d+ of"):
        train(mlp(64, 4), synthetic, TrainConfig(epochs=5, lr=1e12, momentum=0.0, schedule="constant"))


def test_lr_schedules_with_warmup() -> None:
    cosine = TrainConfig(lr=0.2, schedule="cosine")
    assert [lr_at(s, 100, 4, cosine) for s in range(4)] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert lr_at(4, 100, 4, cosine) == pytest.approx(0.2)
    assert lr_at(52, 100, 4, cosine) == pytest.approx(0.1)
    assert lr_at(99, 100, 4, cosine) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 95 / 96)))
    step = TrainConfig(lr=1.0, schedule="step")
    assert [lr_at(s, 100, 0, step) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    constant = TrainConfig(lr=0.3, schedule="constant")
    assert lr_at(0, 10, 2, constant) == pytest.approx(0.15) and lr_at(9, 10, 2, constant) == 0.3


def test_runs_covering_parts_of_one_cycle_follow_it() -> None:
    """Two runs over halves of a cosine cycle give the rates of one run over the whole cycle."""
    whole = TrainConfig(lr=0.1)
    first, second = TrainConfig(lr=0.1, cycle=(0.0, 0.5)), TrainConfig(lr=0.1, cycle=(0.5, 1.0))
    joined = [lr_at(s, 50, 0, first) for s in range(50)] + [lr_at(s, 50, 0, second) for s in range(50)]
    assert joined == pytest.approx([lr_at(s, 100, 0, whole) for s in range(100)])
    held = TrainConfig(lr=0.1, cycle=(0.5, 0.5))
    assert {round(lr_at(s, 10, 0, held), 12) for s in range(10)} == {0.05}
    assert lr_at(5, 10, 0, TrainConfig(lr=1.0, schedule="step", cycle=(0.5, 1.0))) == pytest.approx(0.01)


def test_zero_learning_rate_leaves_parameters_alone(synthetic) -> None:
    model = mlp(64, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, synthetic, TrainConfig(epochs=1, lr=0.0, weight_decay=0.1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class ZeroGradient(nn.Module):
    """A model whose extra parameters get zero (not None) gradients: only decay can move them."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
        self.kernel = nn.Parameter(torch.ones(3, 3))
        self.bn = nn.BatchNorm1d(3)
        self.prelu = nn.PReLU(3)
        self.bias = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.kernel.sum() + self.bn.weight.sum() + self.bn.bias.sum() + self.prelu.weight.sum()
        return self.body(x) + 0 * (extra + self.bias.sum())


def test_weight_decay_only_on_weights(synthetic) -> None:
    model = ZeroGradient()
    groups = param_groups(model, 0.5)
    assert {id(p) for p in groups[0]["params"]} == {id(model.body[1].weight), id(model.kernel)}
    assert groups[1]["weight_decay"] == 0.0
    train(model, synthetic, TrainConfig(epochs=1, lr=0.1, weight_decay=0.5, schedule="constant"))
    assert (model.kernel < 0.99).all()  # decayed
    assert torch.equal(model.bn.weight.detach(), torch.ones(3))  # not decayed
    assert torch.equal(model.bn.bias.detach(), torch.zeros(3))
    assert torch.equal(model.prelu.weight.detach(), torch.full((3,), 0.25))
    assert torch.equal(model.bias.detach(), torch.ones(3))


def test_train_restores_mode_and_threads(synthetic) -> None:
    model = mlp(64, 4).eval()
    threads = torch.get_num_threads()
    seen = []
    train(model, synthetic, TrainConfig(epochs=1, threads=1), on_epoch=lambda r: seen.append(torch.get_num_threads()))
    assert seen == [1] and torch.get_num_threads() == threads and not model.training


def test_evaluate_counts_wrong_predictions_in_eval_mode() -> None:
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert not self.training
            return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.int64), 3).float()

    split = Split(torch.zeros(7, 1, 2, 2), torch.tensor([0, 0, 1, 2, 0, 1, 0]))
    model = Fixed().train()
    assert evaluate(model, split, batch_size=3) == pytest.approx(3 / 7)
    assert model.training
    with pytest.raises(DataError, match="empty"):
        evaluate(model, Split(torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.int64)))


def test_device_settings_choose_autocast_and_memory_format() -> None:
    cpu = device_settings("cpu")
    assert cpu.autocast_dtype is None and cpu.memory_format == torch.channels_last
    cuda = device_settings("cuda:1")
    assert cuda.device == torch.device("cuda:1")
    assert cuda.autocast_dtype == torch.bfloat16 and cuda.memory_format == torch.channels_last
    images = cpu.put(torch.zeros(2, 3, 4, 4))
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    assert cpu.put(torch.zeros(2, 3)).is_contiguous()  # only image batches change layout
    with pytest.raises(ConfigError, match="unknown device"):
        device_settings("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_without_cuda_is_a_config_error(synthetic) -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train(mlp(64, 4), synthetic, TrainConfig(device="cuda"))


@pytest.mark.parametrize(
    "options",
    [
        {"epochs": 0},
        {"lr": -1.0},
        {"batch_size": 0},
        {"schedule": "linear"},
        {"cycle": (0.6, 0.4)},
        {"cycle": (0.0, 1.5)},
        {"warmup_epochs": -1},
        {"label_smoothing": 1.0},
        {"momentum": 1.0},
        {"threads": 0},
        {"max_train_batches": 0},
    ],
)
def test_config_rejects_bad_values(options: dict) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**options)


@pytest.mark.slow
def test_compiled_training_matches_eager(synthetic) -> None:
    eager, compiled = mlp(64, 4), mlp(64, 4)
    config = TrainConfig(epochs=1, max_train_batches=4, schedule="constant")
    train(eager, synthetic, config)
    result = train(compiled, synthetic, dataclasses.replace(config, compile=True))
    assert 0 <= result.val_error <= 1
    for key, value in eager.state_dict().items():
        assert torch.allclose(value, compiled.state_dict()[key], atol=1e-5)


def test_extra_loss_is_added_and_reported_apart(synthetic) -> None:
    config = TrainConfig(epochs=1, lr=0.05, seed=1, max_train_batches=4, weight_decay=0.0)
    plain_model, pulled_model = mlp(64, 4), mlp(64, 4)
    plain = train(plain_model, synthetic, config)

    def pull_to_zero(model: nn.Module) -> torch.Tensor:
        return model[1].weight.square().sum()

    pulled = train(pulled_model, synthetic, config, extra_loss=pull_to_zero)
    assert plain.history[0].extra_loss == 0.0 and pulled.history[0].extra_loss > 0.0
    assert pulled_model[1].weight.abs().sum() < plain_model[1].weight.abs().sum()  # the term was optimised


def test_time_limit_fits_the_steps_to_the_time_left() -> None:
    # 10 s left at 0.2 s a step: 50 more steps fit, capped by the configured steps; none after the end
    assert _fit_to_time(step=20, max_steps=1000, now=4.0, step_seconds=0.2, end=14.0) == 70
    assert _fit_to_time(step=20, max_steps=30, now=4.0, step_seconds=0.2, end=14.0) == 30
    assert _fit_to_time(step=20, max_steps=1000, now=15.0, step_seconds=0.2, end=14.0) == 20


def test_a_deadline_cuts_the_run_inside_an_epoch(digits) -> None:
    """A wall-clock deadline a fraction of an epoch away ends the run within a step of it, the
    last epoch partial; one already passed trains two steps."""
    started = time.time()
    config = TrainConfig(epochs=10_000, lr=0.1, batch_size=8, deadline=started + 0.6)
    result = train(small_cnn(), digits, config)
    steps_per_epoch = len(digits.train) // 8
    steps = result.epochs * steps_per_epoch
    assert result.epochs < 10_000 and steps == pytest.approx(round(steps))  # whole steps, a partial epoch
    epoch_seconds = result.seconds / max(result.epochs, 1e-9)
    assert time.time() - started < 0.6 + epoch_seconds / 8 + 0.5  # a step, one validation and the start-up
    late = train(small_cnn(), digits, TrainConfig(epochs=5, batch_size=8, deadline=started - 1))
    assert late.epochs == pytest.approx(2 / steps_per_epoch) and len(late.history) == 1


def test_time_limited_run_ends_in_time_with_the_rate_decayed(digits, monkeypatch) -> None:
    seen: list[float] = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):  # noqa: ANN001 - records the learning rate of every step
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "SGD", Spy)
    # short epochs, so that many fit in the limit even on a busy machine
    config = TrainConfig(epochs=10_000, lr=0.1, batch_size=64, max_train_batches=2, time_limit=2.0)
    result = train(small_cnn(), digits, config)
    assert 1 <= result.epochs < 10_000 and math.ceil(result.epochs) == len(result.history)  # the last may be partial
    assert result.seconds < 2.0 + 3 * max(h.seconds for h in result.history)
    assert seen[0] == pytest.approx(0.1, rel=1e-3) and seen[-1] < 0.1 * 0.1  # decayed (a slow step may end it early)


def test_validation_loss_is_the_mean_cross_entropy(digits) -> None:
    model = small_cnn()
    error, loss = validate(model, digits.val)
    with torch.no_grad():
        logits = model.eval()(digits.val.x)
    assert error == evaluate(model, digits.val)
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, digits.val.y).item(), rel=1e-5)


def test_training_leaves_the_callers_random_stream_alone(digits) -> None:
    model = small_cnn()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(model, digits, TrainConfig(epochs=1, batch_size=64, max_train_batches=2, seed=7))
    assert torch.equal(torch.rand(3), expected)
