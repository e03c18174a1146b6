"""The one kernel algebra of network morphism, shared by the morphs and the module solver.

Equation numbers are those of Wei, Wang, Chen, "Modularized Morphing of Neural Networks" (2017),
which restates the depth and kernel-size morphing of Wei et al., "Network Morphism" (ICML 2016)
as TYPE-I (eq. 2) and adds TYPE-II (eq. 4); docs/design.md#equation-numbers lists them.

Conventions: a filter is a tensor ``(C_out, C_in, k, k)`` used with
``torch.nn.functional.conv2d`` (cross-correlation), ``padding=k // 2``; kernels are centred, so
zero padding a kernel keeps its centre. Every function takes its factors in the paper's order:
``compose(f2, f1)`` is ``F2 ⊛ F1``, F1 applied first.
"""

from __future__ import annotations

import torch
from torch.nn.functional import conv2d

from morphnas.errors import MorphError

__all__ = ["compose", "delta", "pad_kernel", "split_parallel"]

# Below this many channel triples (C_out * C_mid * C_in), compose is one conv2d call; above, one
# matrix product per tap of the smaller kernel (faster for wide filters).
_SMALL_COMPOSE = 32_768


def check_filter(f: torch.Tensor, what: str) -> None:
    """MorphError unless ``f`` is a 4-d filter with a square odd kernel."""
    if not isinstance(f, torch.Tensor) or f.dim() != 4:
        raise MorphError(f"{what} must be a 4-d tensor (C_out, C_in, k, k), got {getattr(f, 'shape', f)!r}")
    if f.shape[2] != f.shape[3] or f.shape[2] % 2 == 0:
        raise MorphError(f"{what} must have a square odd kernel, got {tuple(f.shape)}")


def compose(f2: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
    """Eq. 2's ``F2 ⊛ F1``: the filter ``h`` with ``conv(conv(x, f1), f2) == conv(x, h)``.

    ``f1`` is ``(C_mid, C_in, k1, k1)``, ``f2`` is ``(C_out, C_mid, k2, k2)`` and ``h`` is
    ``(C_out, C_in, k1 + k2 - 1, k1 + k2 - 1)`` with ``h[:, :, s] = sum_{q + r = s} f2[:, :, q] @
    f1[:, :, r]``: spatially a full convolution of the kernels, channel-wise a matrix product.
    Equality holds in the interior of an image; everywhere when one factor is 1x1 (or a centred
    spatial identity). Computed as one conv2d for narrow filters, else one matrix product per tap
    of the smaller kernel.
    """
    check_filter(f2, "f2")
    check_filter(f1, "f1")
    if f2.shape[1] != f1.shape[0]:
        raise MorphError(
            f"cannot compose {tuple(f2.shape)} after {tuple(f1.shape)}: "
            f"channels {f2.shape[1]} != {f1.shape[0]}"
        )
    dtype = torch.result_type(f2, f1)
    f2, f1 = f2.to(dtype), f1.to(dtype)
    c_out, c_mid, k2, _ = f2.shape
    _, c_in, k1, _ = f1.shape
    if c_out * c_mid * c_in <= _SMALL_COMPOSE:
        # one op: a full convolution of the kernels, batched over the input channels
        return conv2d(f1.transpose(0, 1), f2.flip(-1, -2), padding=k2 - 1).transpose(0, 1)
    out = f2.new_zeros(c_out, c_in, k1 + k2 - 1, k1 + k2 - 1)
    if k2 <= k1:
        flat = f1.reshape(c_mid, c_in * k1 * k1)
        for y in range(k2):
            for x in range(k2):
                out[:, :, y : y + k1, x : x + k1] += (f2[:, :, y, x] @ flat).reshape(c_out, c_in, k1, k1)
    else:
        flat = f2.permute(0, 2, 3, 1).reshape(c_out * k2 * k2, c_mid)
        for y in range(k1):
            for x in range(k1):
                part = (flat @ f1[:, :, y, x]).reshape(c_out, k2, k2, c_in).permute(0, 3, 1, 2)
                out[:, :, y : y + k2, x : x + k2] += part
    return out


def pad_kernel(g: torch.Tensor, k: int) -> torch.Tensor:
    """Zero-pad a kernel ``(..., kg, kg)``, centred, to ``k x k`` (section 3.4; eq. 2's G̃).

    ``k - kg`` must be even and non-negative; ``g`` itself comes back when ``k == kg``. Exact for
    a conv whose padding grows by ``(k - kg) / 2``: a zero tap reads a pixel or padding, both
    times zero (the kernel-size morph of ICML 2016).
    """
    if not isinstance(g, torch.Tensor) or g.dim() < 2 or g.shape[-1] != g.shape[-2]:
        raise MorphError(f"a kernel must be a tensor (..., k, k), got {getattr(g, 'shape', g)!r}")
    kg = g.shape[-1]
    if k < kg or (k - kg) % 2:
        raise MorphError(f"cannot pad a {kg}x{kg} kernel to {k}x{k} (needs k >= {kg}, same parity)")
    p = (k - kg) // 2
    return torch.nn.functional.pad(g, (p, p, p, p)) if p else g


def delta(
    c_out: int, c_in: int, k: int, *, dtype: torch.dtype = torch.float64, device: torch.device | None = None
) -> torch.Tensor:
    """A spatial identity: the centred delta kernel on the channel identity (zero-extended when
    ``c_out != c_in``). With padding ``k // 2`` its conv is exactly the identity, borders included:
    the factor that is not G in an identity-initialised TYPE-I split (eq. 2)."""
    f = torch.zeros(c_out, c_in, k, k, dtype=dtype, device=device)
    n = min(c_out, c_in)
    f[torch.arange(n), torch.arange(n), k // 2, k // 2] = 1
    return f


def split_parallel(
    g: torch.Tensor, r: torch.Tensor, kernels: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4, ``F1 + F2 = G̃``: the branch with the smaller kernel (F1 on a tie) is ``R`` and the
    other ``G̃ - R̃``, both zero-padded to the larger kernel (section 3.4).

    ``r`` has the smaller kernel, ``g`` at most the larger. A random R keeps both branches
    non-zero and different, so they learn different filters.
    """
    k1, k2 = kernels
    large = max(k1, k2)
    rest = pad_kernel(g, large) - pad_kernel(r, large)
    return (r, rest) if k1 <= k2 else (rest, r)
