"""The module algebra of modular network morphism (Wei, Wang, Chen 2017, sections 3.3-3.6).

A leaf package: pure graph and filter math over networkx graphs and torch tensors, with no
knowledge of the network IR or of morphs. :mod:`~morphnas.modules.algebra` holds the graph
abstraction and Algorithm 1, :mod:`~morphnas.modules.kernels` the one kernel algebra (eqs. 2
and 4, section 3.4) the morphs and the solver share, :mod:`~morphnas.modules.solver` the filters of a module (eq. 5,
Algorithm 2, Theorem 8) and :mod:`~morphnas.modules.fixtures` the example modules (A)-(D) of
Fig. 2. It imports only torch, networkx and :mod:`morphnas.errors`.
"""

from morphnas.modules.algebra import (
    MorphStep,
    Reduction,
    apply_sequence,
    apply_step,
    check_type_i,
    check_type_ii,
    classify,
    edge_list,
    effective_kernel,
    make_module,
    module_from_json,
    module_to_json,
    paths_exact_at_borders,
    reduce_module,
    validate_module,
    with_kernels,
)
from morphnas.modules.fixtures import MODULES
from morphnas.modules.kernels import compose, delta, pad_kernel, split_parallel
from morphnas.modules.solver import (
    SolveResult,
    module_filter,
    solve,
    solve_module,
    solve_simple,
    vertex_channels,
)

__all__ = [
    "MODULES",
    "MorphStep",
    "Reduction",
    "SolveResult",
    "apply_sequence",
    "apply_step",
    "check_type_i",
    "check_type_ii",
    "classify",
    "compose",
    "delta",
    "edge_list",
    "effective_kernel",
    "make_module",
    "module_filter",
    "module_from_json",
    "module_to_json",
    "pad_kernel",
    "paths_exact_at_borders",
    "reduce_module",
    "solve",
    "solve_module",
    "solve_simple",
    "split_parallel",
    "validate_module",
    "vertex_channels",
    "with_kernels",
]
