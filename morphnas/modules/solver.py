"""Filters of a module: the module function (eq. 5), Algorithm 2 (alternating least squares on
eq. 7) and the simple-morphable replay (eqs. 2 and 4), over the kernel algebra of
:mod:`morphnas.modules.kernels` (the composition ⊛ of eq. 2, zero padding, the splits).

Conventions: a filter is a tensor ``(C_out, C_in, k, k)`` used with
``torch.nn.functional.conv2d`` (cross-correlation), ``padding=k // 2``, stride 1, no bias; all
kernels are odd and centred, so zero padding a kernel keeps its centre.

Channel widths: the source has ``C_in`` and the sink ``C_out`` channels of G; an internal vertex
takes its width from the ``channels`` argument, else from its ``channels`` attribute, else
``max(C_in, C_out)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import torch
from torch.nn.functional import conv2d

from morphnas.errors import MorphError
from morphnas.modules.algebra import MorphStep, Reduction, effective_kernel, reduce_module, validate_module
from morphnas.modules.kernels import check_filter, compose, delta, pad_kernel, split_parallel

__all__ = [
    "SolveResult",
    "module_filter",
    "solve",
    "solve_module",
    "solve_simple",
    "vertex_channels",
]

# Largest dense operator (entries) assembled for a step whose C1 and C2 are both wider than 1x1;
# above it the step is solved matrix-free by CGLS with compose and its adjoint.
_DENSE_LIMIT = 8_000_000
_CG_MAXITER = 300
_CG_TOL = 1e-13


@dataclass
class SolveResult:
    """Filters for every edge of a module and how well they reproduce G.

    ``residual`` is relative, ``||G̃ - M(F)|| / ||G̃||`` with M(F) the module function of eq. 5
    recomputed from the returned filters (absolute when G is zero); ``converged`` is
    ``residual <= tol``. ``sweeps`` counts the ALS sweeps of Algorithm 2 (0 when none ran) and
    ``history`` the residual after each; ``ms`` is the wall time.
    """

    filters: dict[str, torch.Tensor]
    residual: float
    sweeps: int
    converged: bool
    ms: float
    history: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# filters


def _crop(g: torch.Tensor, k: int) -> torch.Tensor:
    p = (g.shape[-1] - k) // 2
    return g[:, :, p : p + k, p : p + k] if p else g


def _support_within(g: torch.Tensor, k: int) -> bool:
    """True when ``g`` is zero outside its centred ``k x k`` window."""
    return bool(torch.count_nonzero(g).item() == torch.count_nonzero(_crop(g, k)).item())


def _sum_padded(terms: Sequence[torch.Tensor]) -> torch.Tensor:
    k = max(t.shape[-1] for t in terms)
    out = pad_kernel(terms[0], k).clone()
    for term in terms[1:]:
        out += pad_kernel(term, k)
    return out


def vertex_channels(
    m: nx.MultiDiGraph, c_in: int, c_out: int, channels: Mapping[str, int] | None = None
) -> dict[str, int]:
    """The width of every vertex: ``c_in`` at the source, ``c_out`` at the sink, and for the others
    ``channels[v]``, else the vertex's ``channels`` attribute, else ``max(c_in, c_out)``."""
    s, t = validate_module(m)
    channels = dict(channels or {})
    for v, c in channels.items():
        if v not in m:
            raise MorphError(f"channels given for {v!r}, which is not a vertex of the module")
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise MorphError(f"channels[{v!r}] must be a positive int, got {c!r}")
    fixed = {s: c_in, t: c_out}
    for v, c in fixed.items():
        if channels.get(v, c) != c:
            raise MorphError(f"vertex {v!r} has the {c} channels of G, not {channels[v]}")
    out = {}
    for v, data in m.nodes(data=True):
        out[v] = fixed.get(v, channels.get(v, data.get("channels", max(c_in, c_out))))
    return out


def _filter_widths(m: nx.MultiDiGraph, filters: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Check every edge has a filter of its kernel and consistent channels; return the widths."""
    widths: dict[str, int] = {}
    names = set()
    for u, v, name, d in m.edges(keys=True, data=True):
        names.add(name)
        if name not in filters:
            raise MorphError(f"no filter for edge {name!r} ({u}->{v})")
        f = filters[name]
        check_filter(f, f"filter of edge {name!r}")
        if f.shape[-1] != d["kernel"]:
            raise MorphError(
                f"filter of edge {name!r} is {f.shape[-1]}x{f.shape[-1]}, the edge's kernel is {d['kernel']}"
            )
        for vertex, c in ((v, f.shape[0]), (u, f.shape[1])):
            if widths.setdefault(vertex, c) != c:
                raise MorphError(
                    f"filter of edge {name!r} gives vertex {vertex!r} {c} channels, "
                    f"other edges {widths[vertex]}"
                )
    extra = sorted(set(filters) - names)
    if extra:
        raise MorphError(f"filters given for edges not in the module: {extra}")
    return widths


def _forward(m, s, filters) -> dict[str, torch.Tensor | None]:
    """H[v] = the module function from the source to v (None at the source: the identity)."""
    h: dict[str, torch.Tensor | None] = {}
    for v in nx.topological_sort(m):
        if v == s:
            h[v] = None
            continue
        terms = []
        for u, _, name in m.in_edges(v, keys=True):
            hu = h[u]
            terms.append(filters[name] if hu is None else compose(filters[name], hu))
        h[v] = _sum_padded(terms)
    return h


def _backward(m, t, filters) -> dict[str, torch.Tensor | None]:
    """T[v] = the module function from v to the sink (None at the sink: the identity)."""
    out: dict[str, torch.Tensor | None] = {}
    for v in reversed(list(nx.topological_sort(m))):
        if v == t:
            out[v] = None
            continue
        terms = []
        for _, w, name in m.out_edges(v, keys=True):
            tw = out[w]
            terms.append(filters[name] if tw is None else compose(tw, filters[name]))
        out[v] = _sum_padded(terms)
    return out


def module_filter(m: nx.MultiDiGraph, filters: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The module function (eq. 5): the sum over s->t paths of the composed filters (eq. 6 for
    module (D)), padded to the effective kernel.

    Computed by dynamic programming over a topological order (H[v] = sum over in-edges u->v of
    F ⊛ H[u]), never by enumerating paths. Raises :class:`MorphError` when a filter is missing, has
    the wrong kernel, or its channels disagree with another edge's at a shared vertex.
    """
    s, t = validate_module(m)
    _filter_widths(m, filters)
    ht = _forward(m, s, filters)[t]
    assert ht is not None
    return pad_kernel(ht, effective_kernel(m))


def _relative(diff: torch.Tensor, ref_norm: float) -> float:
    n = float(torch.linalg.vector_norm(diff))
    return n / ref_norm if ref_norm > 0 else n


# --------------------------------------------------------------------------------------------
# one least-squares step of Algorithm 2: min || pad(C1 ⊛ D ⊛ C2) - R ||


def _flipt(f: torch.Tensor) -> torch.Tensor:
    """The adjoint filter: channels transposed, kernel flipped."""
    return f.flip(-1, -2).transpose(0, 1)


def _apply(c1: torch.Tensor | None, x: torch.Tensor, c2: torch.Tensor | None, k: int) -> torch.Tensor:
    """The operator of eq. 7: ``x -> C1 ⊛ x ⊛ C2`` zero-padded to ``k`` (None is the identity)."""
    if c2 is not None:
        x = compose(x, c2)
    if c1 is not None:
        x = compose(c1, x)
    return pad_kernel(x, k)


def _adjoint(c1: torch.Tensor | None, y: torch.Tensor, c2: torch.Tensor | None, kj: int) -> torch.Tensor:
    """The adjoint of :func:`_apply` for an unknown of kernel ``kj`` (a correlation, then a crop)."""
    if c1 is not None:
        y = compose(_flipt(c1), y)
    if c2 is not None:
        y = compose(y, _flipt(c2))
    return _crop(y, kj)


def _lstsq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares (SVD-based on the CPU, so rank-deficient systems are fine)."""
    driver = "gelsd" if a.device.type == "cpu" else None
    return torch.linalg.lstsq(a, b, driver=driver).solution


def _spd_solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve normal equations: Cholesky when the Gram matrix is safely positive definite (its
    factor's diagonal spans less than 1e5, i.e. condition number below about 1e10), else the
    minimum-norm SVD solve, which also handles a singular Gram matrix."""
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        diag = chol.diagonal()
        if float(diag.min()) > 1e-5 * float(diag.max()):
            return torch.cholesky_solve(rhs, chol)
    return _lstsq(gram, rhs)


def _left_matrix(c1: torch.Tensor, kj: int, k: int) -> torch.Tensor:
    """The matrix of ``x -> pad(C1 ⊛ x, k)`` on one input channel: (C_out k k) x (c_w kj kj)."""
    c_out, c_w, k1, _ = c1.shape
    mat = c1.new_zeros(c_out, k, k, c_w, kj, kj)
    block = c1.permute(0, 2, 3, 1)
    for by in range(kj):
        for bx in range(kj):
            y0, x0 = k // 2 + by - kj // 2 - k1 // 2, k // 2 + bx - kj // 2 - k1 // 2
            mat[:, y0 : y0 + k1, x0 : x0 + k1, :, by, bx] = block
    return mat.reshape(c_out * k * k, c_w * kj * kj)


def _left_solve(c1, c2, r, c_w: int, c_u: int, kj: int) -> torch.Tensor:
    """The step when C2 is 1x1 (or the identity): the operator is the Kronecker product
    ``Q^T ⊗ L`` of ``L: x -> C1 ⊛ x`` and the channel matrix ``Q = C2``, whose pseudo-inverse is
    ``(Q^+)^T ⊗ L^+``: ``D = L^+ (R Q^+)``, the minimum-norm least-squares solution."""
    k = r.shape[-1]
    c_out = r.shape[0]
    z = r if c2 is None else torch.einsum("oiyx,iq->oqyx", r, torch.linalg.pinv(c2[:, :, 0, 0]))
    if c1 is None:
        return _crop(z, kj).clone()
    if c1.shape[-1] == 1:
        return torch.einsum("po,oqyx->pqyx", torch.linalg.pinv(c1[:, :, 0, 0]), _crop(z, kj))
    if c_out * k * k * c_w * kj * kj > _DENSE_LIMIT:
        return _cgls(c1, c2, r, (c_w, c_u, kj, kj))
    mat = _left_matrix(c1, kj, k)
    rhs = z.permute(0, 2, 3, 1).reshape(c_out * k * k, c_u)
    return _lstsq(mat, rhs).reshape(c_w, kj, kj, c_u).permute(0, 3, 1, 2).contiguous()


def _pair_kernel(c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """``T[o, p, q, i, d] = sum_{a + c = d} C1[o, p, a] C2[q, i, c]``: what one unit of the unknown at
    channel pair (p, q) contributes to G̃'s channel pair (o, i), per tap offset d."""
    c_out, c_w, k1, _ = c1.shape
    c_u, c_in, k2, _ = c2.shape
    kt = k1 + k2 - 1
    pair = c1.new_zeros(c_out, c_w, c_u, c_in, kt, kt)
    for ay in range(k1):
        for ax in range(k1):
            pair[..., ay : ay + k2, ax : ax + k2] += torch.einsum("op,qiyx->opqiyx", c1[:, :, ay, ax], c2)
    return pair


def _dense_operator(c1: torch.Tensor, c2: torch.Tensor, kj: int, k: int) -> torch.Tensor:
    """The matrix of ``x -> pad(C1 ⊛ x ⊛ C2, k)``, assembled per tap pair: entry
    ``[(o, i, s), (p, q, b)] = T[o, p, q, i, s - b]`` (see :func:`_pair_kernel`)."""
    c_out, c_w, c_u, c_in, kt, _ = (pair := _pair_kernel(c1, c2)).shape
    pair = pair.permute(0, 3, 4, 5, 1, 2)
    mat = c1.new_zeros(c_out, c_in, k, k, c_w, c_u, kj, kj)
    for by in range(kj):
        for bx in range(kj):
            y0, x0 = k // 2 + by - kj // 2 - kt // 2, k // 2 + bx - kj // 2 - kt // 2
            mat[:, :, y0 : y0 + kt, x0 : x0 + kt, :, :, by, bx] = pair
    return mat.reshape(c_out * c_in * k * k, c_w * c_u * kj * kj)


def _normal_equations(c1: torch.Tensor, c2: torch.Tensor, r: torch.Tensor, kj: int):
    """``(A^T A, A^T r)`` for the operator of :func:`_dense_operator`, without forming A.

    A's column for unknown tap b is T shifted by b, so ``A^T A`` only depends on the shift
    difference: ``sum_{o, i, d} T[o, pq, i, d] T[o, p'q', i, d + b - b']``, one conv2d of T with
    itself over the (2 kj - 1)^2 differences; ``A^T r`` is the correlation of r with T, cropped.
    """
    c_out, c_w, c_u, c_in, kt, _ = (pair := _pair_kernel(c1, c2)).shape
    k = r.shape[-1]
    flat = pair.permute(1, 2, 0, 3, 4, 5).reshape(c_w * c_u, c_out * c_in, kt, kt)
    corr = conv2d(flat, flat, padding=kj - 1)  # [p'q', pq, b - b' + kj - 1]
    taps = torch.arange(kj * kj, device=r.device)
    dy = taps[:, None] // kj - taps[None, :] // kj + kj - 1
    dx = taps[:, None] % kj - taps[None, :] % kj + kj - 1
    n = c_w * c_u * kj * kj
    gram = corr[:, :, dy, dx].permute(1, 2, 0, 3).reshape(n, n)
    rhs = conv2d(r.reshape(1, c_out * c_in, k, k), flat)  # [pq, y]: y = b + (k - kt) / 2 - kj // 2
    return gram, _crop(rhs, kj).reshape(n, 1)


def _cgls(c1, c2, r, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """Matrix-free least squares (CG on the normal equations, started at zero, so it tends to the
    minimum-norm solution) with :func:`_apply` and :func:`_adjoint` as the operator pair."""
    k, kj = r.shape[-1], shape[-1]
    x = r.new_zeros(shape)
    res = r.clone()
    s = _adjoint(c1, res, c2, kj)
    p = s.clone()
    gamma = float((s * s).sum())
    stop = _CG_TOL * math.sqrt(gamma)
    for _ in range(_CG_MAXITER):
        if gamma == 0.0 or math.sqrt(gamma) <= stop:
            break
        q = _apply(c1, p, c2, k)
        qq = float((q * q).sum())
        if qq == 0.0:
            break
        alpha = gamma / qq
        x += alpha * p
        res -= alpha * q
        s = _adjoint(c1, res, c2, kj)
        gamma_new = float((s * s).sum())
        p = s + (gamma_new / gamma) * p
        gamma = gamma_new
    return x


def _tr(f: torch.Tensor | None) -> torch.Tensor | None:
    return None if f is None else f.transpose(0, 1)


def solve_factor(c1, c2, r, c_w: int, c_u: int, kj: int) -> torch.Tensor:
    """The (c_w, c_u, kj, kj) filter D minimising ``|| pad(C1 ⊛ D ⊛ C2) - R ||``: eq. 7 is linear
    in F_j, and so is eq. 2 in either factor (``C1`` or ``C2`` None: nothing on that side)."""
    if c2 is None or c2.shape[-1] == 1:
        return _left_solve(c1, c2, r, c_w, c_u, kj)
    if c1 is None or c1.shape[-1] == 1:
        # (A ⊛ B)^T = B^T ⊛ A^T channel-wise: transpose and solve the mirrored problem.
        return _left_solve(_tr(c2), _tr(c1), r.transpose(0, 1), c_u, c_w, kj).transpose(0, 1).contiguous()
    k = r.shape[-1]
    if r.numel() * c_w * c_u * kj * kj > _DENSE_LIMIT:
        return _cgls(c1, c2, r, (c_w, c_u, kj, kj))
    if r.numel() >= 2 * c_w * c_u * kj * kj:
        # tall: solve the normal equations, assembled from the tap structure (see _normal_equations)
        gram, rhs = _normal_equations(c1, c2, r, kj)
        return _spd_solve(gram, rhs).reshape(c_w, c_u, kj, kj)
    return _lstsq(_dense_operator(c1, c2, kj, k), r.reshape(-1, 1)).reshape(c_w, c_u, kj, kj)


# --------------------------------------------------------------------------------------------
# Algorithm 2


def _as_g(g: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    check_filter(g, "G")
    return g.to(dtype) if dtype is not None else g


def _generator(rng: torch.Generator | int | None) -> torch.Generator:
    if isinstance(rng, torch.Generator):
        return rng
    return torch.Generator().manual_seed(0 if rng is None else int(rng))


def _randn(shape, gen: torch.Generator, like: torch.Tensor, std: float) -> torch.Tensor:
    return (torch.randn(shape, generator=gen, dtype=like.dtype) * std).to(like.device)


def _target(m: nx.MultiDiGraph, g: torch.Tensor) -> torch.Tensor:
    k = effective_kernel(m)
    if g.shape[-1] > k:
        raise MorphError(
            f"G is {g.shape[-1]}x{g.shape[-1]} but the module's effective kernel is only {k}x{k}: "
            "no filters can reproduce it"
        )
    return pad_kernel(g, k)


def solve_module(
    m: nx.MultiDiGraph,
    g: torch.Tensor,
    *,
    channels: Mapping[str, int] | None = None,
    max_sweeps: int = 50,
    tol: float = 1e-10,
    seed: int = 0,
    init: Mapping[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> SolveResult:
    """Algorithm 2: filters for every edge of ``m`` with module function (eq. 5) equal to G̃.

    Starts from random filters (std ``1/sqrt(fan_in)``, from ``seed``; edges in ``init`` start from
    the given filters) and sweeps the edges in the graph's order. For edge ``j: u -> w`` with all
    other filters fixed, eq. 7 reads ``G̃ = C1 ⊛ F_j ⊛ C2 + C3`` with ``C2`` the module function
    from the source to ``u`` and ``C1`` from ``w`` to the sink; the step replaces ``F_j`` by
    ``F_j + D`` with D the minimum-norm least-squares solution of ``C1 ⊛ D ⊛ C2 = G̃ - M(F)``.
    Never a dense operator over images: when C1 or C2 is 1x1 (always so when no path stacks two
    wide convs) the operator is a Kronecker product and D comes from one small ``lstsq`` and a
    pseudo-inverse; otherwise its normal equations are assembled from the tap structure when
    small (a ``|F_j|``-square system), else the step runs matrix-free (CGLS with :func:`compose`
    and its adjoint, at most ``_CG_MAXITER`` iterations, so it may be inexact, never increasing the
    residual).

    Stops when the relative residual after a sweep is ``<= tol`` or after ``max_sweeps`` sweeps; the
    returned residual is recomputed from the returned filters, never assumed. The paper's correctness
    argument (``|F_j| >= |G̃|`` for some j) makes that step's system square or wider; it is then
    solvable when the operator is onto (e.g. C1, C2 of full rank), and one sweep suffices.
    """
    start = time.perf_counter()
    s, t = validate_module(m)
    g = _as_g(g, dtype)
    c_out, c_in = g.shape[:2]
    target = _target(m, g)
    k = target.shape[-1]
    widths = vertex_channels(m, c_in, c_out, channels)
    gen = _generator(seed)
    edges = list(m.edges(keys=True, data=True))
    init = dict(init or {})
    unknown = sorted(set(init) - {name for _, _, name, _ in edges})
    if unknown:
        raise MorphError(f"init gives filters for edges not in the module: {unknown}")
    filters: dict[str, torch.Tensor] = {}
    for u, w, name, d in edges:
        shape = (widths[w], widths[u], d["kernel"], d["kernel"])
        if name in init:
            f = init[name].to(dtype=target.dtype, device=target.device)
            if tuple(f.shape) != shape:
                raise MorphError(f"init filter of edge {name!r} is {tuple(f.shape)}, expected {shape}")
            filters[name] = f.clone()
        else:
            filters[name] = _randn(shape, gen, target, 1.0 / math.sqrt(widths[u] * d["kernel"] ** 2))
    ref = float(torch.linalg.vector_norm(target))

    def residual() -> float:
        return _relative(target - module_filter(m, filters), ref)

    res = residual()
    history: list[float] = []
    sweeps = 0
    while res > tol and sweeps < max_sweeps:
        sweeps += 1
        for u, w, name, d in edges:
            h = _forward(m, s, filters)
            b = _backward(m, t, filters)
            ht = h[t]
            assert ht is not None
            r = target - pad_kernel(ht, k)
            c1, c2 = b[w], h[u]
            delta = solve_factor(c1, c2, r, widths[w], widths[u], d["kernel"])
            filters[name] = filters[name] + delta
        res = residual()
        history.append(res)
    ms = (time.perf_counter() - start) * 1000.0
    return SolveResult(filters, res, sweeps, res <= tol, ms, history)


# --------------------------------------------------------------------------------------------
# simple morphable modules: replay the morphing sequence (eqs. 2 and 4)


def _rms(w: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(w)) / math.sqrt(w.numel())


def _split_parallel(
    step: MorphStep, w: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """TYPE-II (eq. 4) by :func:`~morphnas.modules.kernels.split_parallel`, R random at the smaller
    kernel on the scale of W."""
    ks = min(step.part_kernels)
    std = _rms(w) or 1.0 / math.sqrt(w.shape[1] * ks * ks)
    rand = _randn((w.shape[0], w.shape[1], ks, ks), gen, w, std)
    return split_parallel(w, rand, step.part_kernels)


def _split_serial(
    step: MorphStep, w: torch.Tensor, widths: Mapping[str, int], gen: torch.Generator, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """TYPE-I (eq. 2): ``F2 ⊛ F1 = W`` for ``F1: src -> v`` (kernel k1) and ``F2: v -> dst`` (k2).

    Identity initialisation where it is exact: F2 the spatial identity and F1 = W (needs
    ``c_v >= c_dst`` and W's support within k1; Net2Net's "new layer after"), else F1 the identity
    and F2 = W (needs ``c_v >= c_src`` and W's support within k2). The extra channels of v get
    random producer filters and zero consumer weights. Otherwise decompose (NetMorph, eq. 3):
    randomise the factor with fewer parameters and solve the other by least squares. Raises
    :class:`MorphError` naming the edge when the split does not reproduce W to ``tol``.
    """
    assert step.vertex is not None
    c_u, c_v, c_w = widths[step.src], widths[step.vertex], widths[step.dst]
    k1, k2 = step.part_kernels
    rel_std = _rms(w) or 1.0
    if c_v >= c_w and _support_within(w, k1):
        f1 = torch.cat([_crop(w, k1), _randn((c_v - c_w, c_u, k1, k1), gen, w, rel_std)])
        return f1, delta(c_w, c_v, k2, dtype=w.dtype, device=w.device)
    if c_v >= c_u and _support_within(w, k2):
        fan_in = 1.0 / math.sqrt(c_u * k1 * k1)
        eye = delta(c_u, c_u, k1, dtype=w.dtype, device=w.device)
        f1 = torch.cat([eye, _randn((c_v - c_u, c_u, k1, k1), gen, w, fan_in)])
        f2 = torch.cat([_crop(w, k2), w.new_zeros(c_w, c_v - c_u, k2, k2)], dim=1)
        return f1, f2
    k = w.shape[-1]
    if c_v * c_u * k1 * k1 <= c_w * c_v * k2 * k2:
        f1 = _randn((c_v, c_u, k1, k1), gen, w, 1.0 / math.sqrt(c_u * k1 * k1))
        f2 = solve_factor(None, f1, w, c_w, c_v, k2)
    else:
        f2 = _randn((c_w, c_v, k2, k2), gen, w, 1.0 / math.sqrt(c_v * k2 * k2))
        f1 = solve_factor(f2, None, w, c_v, c_u, k1)
    err = _relative(w - pad_kernel(compose(f2, f1), k), float(torch.linalg.vector_norm(w)))
    if err > tol:
        raise MorphError(
            f"cannot {step.describe()} exactly: no identity initialisation fits (vertex {step.vertex!r} "
            f"has {c_v} channels, {step.src!r} {c_u} and {step.dst!r} {c_w}; kernels {k1} and {k2} for a "
            f"{k}x{k} filter) and the least-squares decomposition (eq. 3) leaves a relative error "
            f"of {err:.2e}"
        )
    return f1, f2


def _replay_filters(
    sequence: Sequence[MorphStep],
    filters: Mapping[str, torch.Tensor],
    widths: Mapping[str, int],
    gen: torch.Generator,
    tol: float,
) -> dict[str, torch.Tensor]:
    out = dict(filters)
    for step in sequence:
        w = out.pop(step.edge)
        if step.type == "II":
            out[step.parts[0]], out[step.parts[1]] = _split_parallel(step, w, gen)
        else:
            out[step.parts[0]], out[step.parts[1]] = _split_serial(step, w, widths, gen, tol)
    return out


def _check_reduction(m: nx.MultiDiGraph, reduction: Reduction) -> None:
    mine = {(k, u, v, d["kernel"]) for u, v, k, d in m.edges(keys=True, data=True)}
    theirs = {(k, u, v, d["kernel"]) for u, v, k, d in reduction.rebuild().edges(keys=True, data=True)}
    if mine != theirs:
        raise MorphError("the reduction does not belong to this module (rebuilt, it has other edges)")


def solve_simple(
    m: nx.MultiDiGraph,
    reduction: Reduction | None,
    g: torch.Tensor,
    rng: torch.Generator | int | None = None,
    *,
    channels: Mapping[str, int] | None = None,
    tol: float = 1e-10,
    dtype: torch.dtype | None = torch.float64,
) -> SolveResult:
    """Filters for a simple morphable module by replaying its morphing sequence (Algorithm 1)
    forward from the single conv G̃ (G zero-padded to the effective kernel).

    TYPE-II steps split ``W = R + (W - R)`` with R random (eq. 4, section 3.4); TYPE-I steps use an
    identity initialisation (eq. 2) or, failing that, a least-squares decomposition (eq. 3). The
    result is checked with :func:`module_filter`: ``residual`` is the relative error of eq. 5 in
    the working precision. A TYPE-I step that cannot be made exact raises :class:`MorphError`
    naming the edge, instead of returning an approximate morph: no identity initialisation fits
    (the factor that must carry the filter's whole kernel meets a new vertex narrower than the
    vertex at its other end, e.g. a 3x3 into a 1-channel blob feeding 2 channels) and the
    decomposition of eq. 3 is not exact either (too few channels). ``reduction`` defaults to
    ``reduce_module(m)``; ``rng`` is a generator or a seed (default 0).
    """
    start = time.perf_counter()
    validate_module(m)
    if reduction is None:
        reduction = reduce_module(m)
    if not reduction.simple:
        raise MorphError(
            f"the module is complex (its irreducible core has {reduction.core.number_of_edges()} edges): "
            "use solve_module or solve"
        )
    _check_reduction(m, reduction)
    g = _as_g(g, dtype)
    target = _target(m, g)
    widths = vertex_channels(m, g.shape[1], g.shape[0], channels)
    root = reduction.root
    assert root is not None
    filters = _replay_filters(reduction.sequence, {root: target}, widths, _generator(rng), tol)
    res = _relative(target - module_filter(m, filters), float(torch.linalg.vector_norm(target)))
    return SolveResult(filters, res, 0, res <= tol, (time.perf_counter() - start) * 1000.0)


def solve(
    m: nx.MultiDiGraph,
    g: torch.Tensor,
    *,
    channels: Mapping[str, int] | None = None,
    max_sweeps: int = 50,
    tol: float = 1e-10,
    seed: int = 0,
    dtype: torch.dtype | None = torch.float64,
) -> SolveResult:
    """Theorem 8's route for any module: reduce it by Algorithm 1; if simple, :func:`solve_simple`;
    else solve the irreducible core by Algorithm 2 (:func:`solve_module`) and replay the morphing
    sequence from the core's filters. The residual is that of the whole module (the core's
    residual, when Algorithm 2 does not converge); a split that cannot be exact raises as in
    :func:`solve_simple`."""
    start = time.perf_counter()
    reduction = reduce_module(m)
    if reduction.simple:
        return solve_simple(m, reduction, g, seed, channels=channels, tol=tol, dtype=dtype)
    g = _as_g(g, dtype)
    widths = vertex_channels(m, g.shape[1], g.shape[0], channels)
    core = reduction.core
    core_channels = {v: widths[v] for v in core if v not in (reduction.source, reduction.sink)}
    inner = solve_module(
        core, g, channels=core_channels, max_sweeps=max_sweeps, tol=tol, seed=seed, dtype=dtype
    )
    gen = _generator(seed + 1)
    filters = _replay_filters(reduction.sequence, inner.filters, widths, gen, tol)
    target = _target(m, g)
    res = _relative(target - module_filter(m, filters), float(torch.linalg.vector_norm(target)))
    ms = (time.perf_counter() - start) * 1000.0
    return SolveResult(filters, res, inner.sweeps, res <= tol, ms, inner.history)
