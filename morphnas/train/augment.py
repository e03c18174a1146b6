"""Batched on-device augmentation: whole-batch tensor ops, no per-image Python loop.

Four kinds (:data:`AUGMENTS`): ``"crop_flip"`` (CIFAR and Fashion-MNIST: pad 4, random crop,
horizontal flip), ``"crop_flip_erase"`` (the same, then random erasing of Zhong et al. 2020, as
the best Fashion-MNIST results use),
``"shift"`` (handwritten digits such as MNIST: random shifts of a few pixels, never a flip, which
would turn a 2 into something that is no digit) and ``"affine"`` (digits again: a small random
rotation and scaling with the shift, the distortions of Simard et al. 2003 without the elastic one).
"""

from __future__ import annotations

import math

import torch

CIFAR_PAD = 4
AUGMENTS: tuple[str, ...] = ("none", "shift", "affine", "crop_flip", "crop_flip_erase")
AFFINE_DEGREES = 12.0
AFFINE_SCALE = 0.1


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """``x`` augmented by ``kind`` (one of :data:`AUGMENTS`; ``"none"`` returns ``x``).

    ``"shift"`` moves each image by up to a twelfth of its side, at least one pixel (2 pixels at
    28 x 28).
    """
    if kind == "none":
        return x
    if kind == "shift":
        return cifar_augment(x, generator, pad=_shift_pixels(x.shape[-1]), flip=False)
    if kind == "affine":
        return affine_augment(x, generator)
    if kind == "crop_flip":
        return cifar_augment(x, generator)
    if kind == "crop_flip_erase":
        return random_erase(cifar_augment(x, generator), generator)
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


def affine_augment(x: torch.Tensor, generator: torch.Generator, degrees: float = AFFINE_DEGREES,
                   scale: float = AFFINE_SCALE) -> torch.Tensor:
    """Rotate each image by up to ``degrees``, scale it by up to ``scale`` either way and shift it
    by up to a twelfth of its side, bilinearly, in one ``grid_sample``; pixels from outside the
    image repeat its border (the background of a digit), not the mean.
    """
    n, _, h, w = x.shape
    draws = torch.rand(4, n, generator=generator, device=generator.device).to(x.device, x.dtype) * 2 - 1
    angle = torch.deg2rad(draws[0] * degrees)
    factor = 1 + draws[1] * scale
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    # affine_grid's coordinates run over [-1, 1] along each side, so a rotation by pixels is
    # diag(w, h)^-1 R diag(w, h) there (no shear when h != w) and a shift of k pixels is 2k / side
    theta = torch.stack([torch.stack([cos, -sin * h / w, draws[2] * 2 * _shift_pixels(w) / w], 1),
                         torch.stack([sin * w / h, cos, draws[3] * 2 * _shift_pixels(h) / h], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
    return out.contiguous(memory_format=_memory_format(x))


def random_erase(x: torch.Tensor, generator: torch.Generator, p: float = 0.5, area: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020, torchvision's ``RandomErasing`` defaults): with
    probability ``p`` each image gets a rectangle of ``area`` of its size (a fraction drawn
    uniformly) and aspect ratio log-uniform in ``ratio``, set to zero (the mean of a normalised
    image), as one mask over the batch."""
    n, _, h, w = x.shape
    draws = torch.rand(5, n, generator=generator, device=generator.device).to(x.device)
    size = (area[0] + draws[0] * (area[1] - area[0])) * h * w
    aspect = torch.exp(math.log(ratio[0]) + draws[1] * (math.log(ratio[1]) - math.log(ratio[0])))
    eh = torch.sqrt(size * aspect).round().clamp(1, h)
    ew = torch.sqrt(size / aspect).round().clamp(1, w)
    top = (draws[2] * (h - eh + 1)).floor()
    left = (draws[3] * (w - ew + 1)).floor()
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]))
    erased = inside & (draws[4] < p)[:, None, None]
    return x.masked_fill(erased[:, None], 0.0).contiguous(memory_format=_memory_format(x))


def _shift_pixels(side: int) -> int:
    """The farthest a digit is shifted along a side of ``side`` pixels: a twelfth, at least one."""
    return max(1, side // 12)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
