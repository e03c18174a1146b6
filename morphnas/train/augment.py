"""Batched on-device augmentation: whole-batch tensor ops, no per-image Python loop.

Two kinds, chosen per data set (:data:`AUGMENTS`): ``"crop_flip"`` (CIFAR: pad 4, random crop,
horizontal flip) and ``"shift"`` (handwritten digits such as MNIST: random shifts of a few
pixels, never a flip, which would turn a 2 into something that is no digit).
"""

from __future__ import annotations

import torch

CIFAR_PAD = 4
AUGMENTS: tuple[str, ...] = ("none", "shift", "crop_flip")


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """``x`` augmented by ``kind`` (one of :data:`AUGMENTS`; ``"none"`` returns ``x``).

    ``"shift"`` moves each image by up to a twelfth of its side, at least one pixel (2 pixels at
    28 x 28).
    """
    if kind == "none":
        return x
    if kind == "shift":
        return cifar_augment(x, generator, pad=max(1, x.shape[-1] // 12), flip=False)
    if kind == "crop_flip":
        return cifar_augment(x, generator)
    raise ValueError(f"unknown augmentation {kind!r}; choose one of {', '.join(AUGMENTS)}")


def cifar_augment(x: torch.Tensor, generator: torch.Generator, pad: int = CIFAR_PAD, flip: bool = True) -> torch.Tensor:
    """Zero-pad by ``pad``, crop each image back to its size at a random offset, flip half at random.

    ``x`` is an N x C x H x W batch (normalised, so zero padding is padding with the mean);
    the result is a new tensor on ``x.device`` with the same shape and memory format. The crop
    offsets and flips are drawn from ``generator`` (on its own device), one per image, and
    applied together as a single gather. ``flip=False`` only shifts.
    """
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=generator.device)
    flips = torch.rand(n, generator=generator, device=generator.device) < 0.5
    offsets, flips = offsets.to(x.device), flips.to(x.device) & flip
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)
    step = torch.where(flips, -1, 1)[:, None]
    cols = offsets[1, :, None] + torch.where(flips, w - 1, 0)[:, None] + step * torch.arange(w, device=x.device)
    out = padded[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return out.contiguous(memory_format=_memory_format(x))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
