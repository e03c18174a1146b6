"""The training loop: SGD with momentum on a data set held on the device.

The whole data set moves to the device once; each epoch draws a permutation from a seeded
``torch.Generator`` and takes batches by slicing it (no DataLoader). The learning rate follows a
per-iteration schedule with linear warm-up. Weight decay applies to weights with two or more
dimensions (convolution and linear kernels) only, never to biases, batch-norm or PReLU
parameters, which are one-dimensional (common practice: decaying them only hurts).
Models and image batches are held in ``channels_last`` on every device (on two CPU cores a
ResNet-8 step on 28 x 28 images takes 27 % less time than in the default layout, a ResNet-20
step 9 % less: experiments/RESULTS.md, fashion_search_vs_baselines); on CUDA the forward pass also runs under
bfloat16 autocast, on the CPU everything is float32 and deterministic for a given seed.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from morphnas.errors import ConfigError, DataError, TrainingDivergedError
from morphnas.train.augment import augment
from morphnas.train.data import Dataset, Split

SCHEDULES: tuple[str, ...] = ("cosine", "step", "constant")
STEP_MILESTONES: tuple[float, ...] = (0.5, 0.75)  # "step": x0.1 at these fractions of the post-warm-up steps


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run; ``epochs`` may be fractional.

    ``time_limit`` (seconds from the start of the run) and ``deadline`` (a ``time.time()`` wall
    clock, the end of a search's phase, the same on every machine of a cluster whose clocks agree)
    make the run fit a wall-clock budget, whichever ends first: ``epochs`` becomes an upper bound,
    and after every step the run is cut to the steps that fit in the time left (less one
    validation) at the mean step time so far, so the learning rate decays to its end within the
    budget and the run ends within a step of it, however busy the machine; the last epoch may
    then be partial. A run whose deadline has passed before it starts trains two steps (the
    first, which warms up, is not timed).

    ``cycle`` is the part of one schedule cycle the run covers: its progress 0 to 1 maps onto
    positions ``cycle[0]`` to ``cycle[1]`` of the schedule. A network trained in several runs,
    as a search lineage is, thereby follows one schedule; ``(x, x)`` holds the rate at ``x``.
    """

    epochs: float = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True
    batch_size: int = 128
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    threads: int | None = None
    max_train_batches: int | None = None
    time_limit: float | None = None
    deadline: float | None = None
    cycle: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, f"epochs must be > 0, got {self.epochs}"),
            (self.lr >= 0, f"lr must be >= 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}"),
            (self.time_limit is None or self.time_limit > 0, f"time_limit must be > 0, got {self.time_limit}"),
            (0 <= self.cycle[0] <= self.cycle[1] <= 1, f"cycle must be 0 <= start <= end <= 1, got {self.cycle}"),
            (
                self.max_train_batches is None or self.max_train_batches >= 1,
                f"max_train_batches must be >= 1, got {self.max_train_batches}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass
class EpochReport:
    """One finished epoch: 1-based index (the last may be partial when ``epochs`` is fractional),
    mean training loss over its batches, validation error, wall seconds including validation,
    and the mean validation cross-entropy (a steadier signal than the 0/1 error on few images)."""

    epoch: int
    train_loss: float
    val_error: float
    seconds: float
    extra_loss: float = 0.0  # mean of the extra loss term (e.g. a regulariser) over the epoch
    val_loss: float = math.nan


@dataclass
class TrainResult:
    """Errors are fractions in [0, 1]; ``epochs`` counts the epochs actually run."""

    val_error: float
    test_error: float | None
    train_loss: float
    epochs: float
    seconds: float
    history: list[EpochReport] = field(default_factory=list)
    val_loss: float = math.nan


@dataclass(frozen=True)
class DeviceSettings:
    """How to run on a device: autocast dtype (None = full precision) and memory format."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    memory_format: torch.memory_format

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def put(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device, image batches in the device's memory format."""
        x = x.to(self.device)
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x


def device_settings(device: str | torch.device) -> DeviceSettings:
    """CUDA: bfloat16 autocast and ``channels_last``; anything else: float32 and ``channels_last``.

    Pure: it does not check that the device exists (see :func:`train`).
    """
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}") from None
    if dev.type == "cuda":
        return DeviceSettings(dev, torch.bfloat16, torch.channels_last)
    return DeviceSettings(dev, None, torch.channels_last)


def lr_at(step: int, total_steps: int, warmup_steps: int, config: TrainConfig) -> float:
    """Learning rate of iteration ``step`` (0-based) of ``total_steps``.

    Linear warm-up from ``lr / warmup_steps`` to ``lr`` over the first ``warmup_steps``, then
    ``cosine`` (to 0 at the end of the cycle), ``step`` (x0.1 at 50 % and 75 % of it) or
    ``constant``, over the part ``config.cycle`` of the cycle.
    """
    if step < warmup_steps:
        return config.lr * (step + 1) / warmup_steps
    start, end = config.cycle
    progress = start + (end - start) * (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "step":
        return config.lr * 0.1 ** sum(progress >= m for m in STEP_MILESTONES)
    return config.lr


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two SGD groups: weights with >= 2 dimensions decay, everything else does not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


@contextlib.contextmanager
def pinned_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads to ``n`` (None: leave alone) and restore them on exit."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    was_training = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, split: Split, *, batch_size: int = 1000, device: str | torch.device = "cpu") -> float:
    """Error fraction of ``model`` on ``split`` in eval mode without gradients (mode is restored)."""
    return validate(model, split, batch_size=batch_size, device=device)[0]


def validate(
    model: nn.Module, split: Split, *, batch_size: int = 1000, device: str | torch.device = "cpu"
) -> tuple[float, float]:
    """(error fraction, mean cross-entropy) of ``model`` on ``split``, as :func:`evaluate`."""
    if len(split.y) == 0:
        raise DataError("cannot evaluate on an empty split")
    settings = device_settings(device)
    wrong = torch.zeros((), dtype=torch.int64, device=settings.device)
    loss = torch.zeros((), dtype=torch.float64, device=settings.device)
    with _mode(model, False), torch.no_grad(), settings.autocast():
        for start in range(0, len(split.y), batch_size):
            x = settings.put(split.x[start : start + batch_size])
            y = split.y[start : start + batch_size].to(settings.device)
            logits = model(x)
            wrong += (logits.argmax(dim=1) != y).sum()
            loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
    return wrong.item() / len(split.y), loss.item() / len(split.y)


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
    evaluate_test: bool = False,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data.train``; validate after every epoch.

    ``extra_loss(model)`` (e.g. MorphNet's regulariser) is added to the cross-entropy of every
    step; ``EpochReport.train_loss`` stays the cross-entropy alone and ``extra_loss`` its mean.

    The model moves to ``config.device`` (and stays there) and is left in the train/eval mode it
    had on entry. ``on_epoch`` receives each :class:`EpochReport` and may raise to stop the run
    (e.g. an Optuna pruner); the exception propagates. A NaN or infinite loss raises
    :class:`TrainingDivergedError` at the end of its epoch (losses stay on the device until then).
    """
    settings = device_settings(config.device)
    if settings.device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {config.device!r} requested but CUDA is not available")
    # seeded for whatever draws from torch's global generator inside (dropout), without
    # reseeding the caller's: the caller's stream goes on as if no training ran
    devices = [settings.device.index or 0] if settings.device.type == "cuda" else []
    with pinned_threads(config.threads), torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        return _train(model, data, config, settings, on_epoch, evaluate_test, extra_loss)


def _train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    settings: DeviceSettings,
    on_epoch: Callable[[EpochReport], None] | None,
    evaluate_test: bool,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None,
) -> TrainResult:
    started = time.perf_counter()
    generator = torch.Generator(device=settings.device).manual_seed(config.seed)
    model.to(settings.device, memory_format=settings.memory_format)
    x_train, y_train = settings.put(data.train.x), data.train.y.to(settings.device)
    val = Split(settings.put(data.val.x), data.val.y.to(settings.device))
    n = len(y_train)
    if n == 0:
        raise DataError(f"{data.name}: the train split is empty")
    batch_size = min(config.batch_size, n)
    steps_per_epoch = n // batch_size  # the last partial batch is dropped (it changes every epoch)
    if config.max_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_train_batches)
    total_steps = max_steps = max(1, round(config.epochs * steps_per_epoch))
    warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps)
    optimizer = torch.optim.SGD(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
    )
    net = torch.compile(model) if config.compile else model
    history: list[EpochReport] = []
    step = epoch = 0
    end = _end(started, config)
    validating = 0.0  # seconds spent validating so far
    first_step_end = 0.0  # step times are measured from here: the first step warms up
    with _mode(model, True):
        while step < total_steps:
            epoch += 1
            epoch_start = time.perf_counter()
            order = torch.randperm(n, generator=generator, device=settings.device)
            losses, extras = [], []  # on the device: one host sync per epoch, not per step (as airbench)
            for index in order[: steps_per_epoch * batch_size].split(batch_size):
                if step >= total_steps:
                    break
                x = x_train[index]
                x = augment(x, data.augment, generator)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total_steps, warmup_steps, config)
                with settings.autocast():
                    loss = F.cross_entropy(net(x), y_train[index], label_smoothing=config.label_smoothing)
                losses.append(loss.detach())
                if extra_loss is not None:
                    extra = extra_loss(model)
                    extras.append(extra.detach())
                    loss = loss + extra
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if step == 1:
                    first_step_end = time.perf_counter()
                elif end is not None:
                    now = time.perf_counter()
                    step_seconds = (now - first_step_end - validating) / (step - 1)
                    reserve = validating / max(1, epoch - 1) or step_seconds * len(val) / batch_size / 3
                    total_steps = _fit_to_time(step, max_steps, now, step_seconds, end - reserve)
            train_loss, extra_mean = _epoch_means(losses, extras, epoch, step, total_steps, config.lr)
            validation_start = time.perf_counter()
            val_error, val_loss = validate(net, val, device=settings.device)
            validating += time.perf_counter() - validation_start
            report = EpochReport(
                epoch, train_loss, val_error, time.perf_counter() - epoch_start, extra_mean, val_loss
            )
            history.append(report)
            if on_epoch is not None:
                on_epoch(report)
    test_error = evaluate(net, data.test, device=settings.device) if evaluate_test else None
    return TrainResult(
        val_error=history[-1].val_error,
        val_loss=history[-1].val_loss,
        test_error=test_error,
        train_loss=history[-1].train_loss,
        epochs=step / steps_per_epoch,
        seconds=time.perf_counter() - started,
        history=history,
    )


def _epoch_means(losses: list[torch.Tensor], extras: list[torch.Tensor], epoch: int, step: int,
                 total_steps: int, lr: float) -> tuple[float, float]:
    """The epoch's mean cross-entropy and extra loss, read from the device at once; a NaN or
    infinite step raises :class:`TrainingDivergedError` naming the first such step."""
    values = torch.stack(losses).double().cpu()
    extra = torch.stack(extras).double().cpu() if extras else torch.zeros_like(values)
    summed = values + extra
    bad = (~torch.isfinite(summed)).nonzero()
    if len(bad):
        first = int(bad[0])
        raise TrainingDivergedError(
            f"training diverged: loss {summed[first].item()} at epoch {epoch}, step {step - len(values) + first + 1} "
            f"of {total_steps} (lr {lr})"
        )
    return values.mean().item(), extra.mean().item()


def _end(started: float, config: TrainConfig) -> float | None:
    """The ``time.perf_counter()`` by which a run started at ``started`` ends (None: no limit)."""
    ends = [started + config.time_limit] if config.time_limit is not None else []
    if config.deadline is not None:
        ends.append(time.perf_counter() + config.deadline - time.time())
    return min(ends, default=None)


def _fit_to_time(step: int, max_steps: int, now: float, step_seconds: float, end: float) -> int:
    """The run's new step count: the steps that still fit before ``end`` at ``step_seconds`` each
    (the mean so far, without the start-up before the first step), never beyond the configured
    ``max_steps``; ``step`` itself once ``end`` has passed."""
    fit = math.floor((end - now) / step_seconds) if now < end else 0
    return min(max_steps, step + max(0, fit))
