"""Rules that turn a site into a module, and the module algebra (Algorithms 1 and 2)."""

from morphnas.grammar.algebra import (
    MorphStep,
    Reduction,
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
    replay,
    validate_module,
    with_kernels,
)
from morphnas.grammar.fixtures import MODULES
from morphnas.grammar.realise import morph_module
from morphnas.grammar.solver import (
    SolveResult,
    compose,
    module_filter,
    pad_kernel,
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
    "apply_step",
    "check_type_i",
    "check_type_ii",
    "classify",
    "compose",
    "edge_list",
    "effective_kernel",
    "make_module",
    "module_filter",
    "module_from_json",
    "module_to_json",
    "morph_module",
    "pad_kernel",
    "paths_exact_at_borders",
    "reduce_module",
    "replay",
    "solve",
    "solve_module",
    "solve_simple",
    "validate_module",
    "vertex_channels",
    "with_kernels",
]

from morphnas.morphnet import rules as _morphnet_rules  # noqa: E402,F401  (registers shrink and expand)
