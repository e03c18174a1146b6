"""What the commands' options offer and default to, known without importing torch, so that every
``morphnas COMMAND --help`` starts fast: the library's own lists live beside torch code.
tests/test_cli_startup_and_wheel.py checks each value here equals the library's."""

from __future__ import annotations

from typing import Literal

DATASETS = ("mnist5k", "digits", "fashion-mnist", "cifar10", "cifar100", "synthetic", "npz:FILE",
            "imagefolder:DIR")  # morphnas.train.DATASETS
AUGMENTS = ("none", "shift", "affine", "crop_flip", "crop_flip_erase")  # morphnas.train.AUGMENTS
LR, BATCH_SIZE = 0.1, 128  # morphnas.train.TrainConfig's defaults
FORMATS = ("onnx", "pt2", "safetensors", "python")  # morphnas.export.FORMATS
TARGETS = ("macs", "params")  # morphnas.morphnet.TARGETS
DEFAULT_STRENGTH = 2.0  # morphnas.morphnet.DEFAULT_STRENGTH
DEFAULT_THRESHOLD = 1e-2  # morphnas.morphnet.DEFAULT_THRESHOLD

AugmentKind = Literal[("default", *AUGMENTS)]  # typer checks --augment's value against these
AUGMENT_HELP = f"Training augmentation: default (the data set's own) or one of {', '.join(AUGMENTS)}."


def augment_kind(kind: AugmentKind) -> bool | str:
    """``--augment KIND`` as :func:`~morphnas.train.load_dataset` takes it (``default``: the data set's own)."""
    return True if kind == "default" else kind
