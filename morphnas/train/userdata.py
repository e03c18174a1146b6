"""The user's own data: a NumPy ``.npz`` file or a folder of images, one sub-folder per class.

Both become a :class:`~morphnas.train.data.Dataset` by the same rules as the built-in sets: a
given test split is kept and a tenth of the rest becomes the validation split (as for CIFAR);
without one, a stratified, seeded 70 / 15 / 15 split (as for digits). Pixels are scaled to
[0, 1] (8-bit images and integer arrays by 1/255) before the train split's normalisation.
Neither format is ever unpickled (``np.load(allow_pickle=False)``; images are decoded by Pillow).
Anything malformed raises :class:`~morphnas.errors.DataError` naming the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from morphnas.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
Parts = tuple[tuple[np.ndarray, np.ndarray], ...]


def read_npz(path: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """``(x, y)`` and ``(x_test, y_test)`` (or None) from ``path``, images as float32 N x C x H x W.

    ``x`` may be N x H x W (one channel), N x C x H x W or N x H x W x C (C of 1, 3 or 4); labels
    are integers, mapped to 0..K-1 in sorted order over both splits.
    """
    try:
        with np.load(path, allow_pickle=False) as arrays:
            files = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read {path} as an .npz file: {err}") from None
    missing = [name for name in ("x", "y") if name not in files]
    if missing or ("x_test" in files) != ("y_test" in files):
        raise DataError(f"{path} needs arrays x and y (and optionally both x_test and y_test), has {sorted(files)}")
    train = _images(files["x"], path, "x"), _labels(files["y"], path, "y")
    test = (_images(files["x_test"], path, "x_test"), _labels(files["y_test"], path, "y_test")) \
        if "x_test" in files else None
    for x, y in (train, test) if test else (train,):
        if len(x) != len(y):
            raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    if test is not None and test[0].shape[1:] != train[0].shape[1:]:
        raise DataError(f"{path}: x_test images are {test[0].shape[1:]}, x images {train[0].shape[1:]}")
    classes, labels = np.unique(np.concatenate([train[1], test[1]]) if test else train[1], return_inverse=True)
    n = len(train[1])
    return (train[0], labels[:n]), (None if test is None else (test[0], labels[n:]))


def read_imagefolder(root: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image under ``root/<class>/``, resized (shorter side) and centre-cropped to ``size``.

    Images are read as RGB, or as one channel when every image is greyscale. Returns images
    (float32 N x C x size x size), labels, and the class names (sorted folder names).
    """
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {f.name: sorted(p for p in f.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) for f in folders}
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise DataError(f"image folder {root}: class folder {empty[0]!r} has no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) < 2:
        raise DataError(f"image folder {root} needs one sub-folder per class and at least two classes, "
                        f"found {len(files)}")
    images, labels = [], []
    for label, paths in enumerate(files.values()):
        for path in paths:
            try:
                with Image.open(path) as image:
                    image.load()
                    images.append(_square(image, size))
            except (OSError, UnidentifiedImageError, ValueError) as err:
                raise DataError(f"cannot read image {path}: {err}") from None
            labels.append(label)
    grey = all(image.mode == "L" for image in images)
    pixels = np.stack([np.asarray(im.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0 for im in images])
    x = pixels[:, None] if grey else pixels.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), np.asarray(labels, dtype=np.int64), list(files)


def _square(image, size: int):
    """``image`` with its shorter side scaled to ``size`` and centre-cropped to ``size`` x ``size``."""
    from PIL import Image

    image = image.convert("L") if image.mode in ("1", "L", "I", "I;16", "F") else image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _images(x: np.ndarray, path: Path, name: str) -> np.ndarray:
    if x.dtype.kind not in "uif":
        raise DataError(f"{path}: {name} must hold numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4) or len(x) == 0:
        raise DataError(f"{path}: {name} must be N x H x W, N x C x H x W or N x H x W x C with C in 1, 3, 4; "
                        f"got shape {x.shape}")
    x = x.astype(np.float32) / (255.0 if x.dtype.kind in "ui" else 1.0)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: {name} holds NaN or infinite values")
    return np.ascontiguousarray(x)


def _labels(y: np.ndarray, path: Path, name: str) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "ui":
        raise DataError(f"{path}: {name} must be a vector of integer labels, got {y.dtype} of shape {y.shape}")
    return y.astype(np.int64)
