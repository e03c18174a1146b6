"""Function-preserving rewrites of (graph, weights), their registry and the verifier.

Every module in this package that defines morphs registers them on import; importing the
package imports them all.
"""

import importlib
import pkgutil

from morphnas.morph.base import (
    MORPHS,
    MorphContext,
    MorphRecord,
    MorphResult,
    MorphSpec,
    apply_morph,
    get_morph,
    register,
    replay,
)
from morphnas.morph.verify import (
    SENSITIVITY_FLOOR,
    TOLERANCE,
    Verification,
    calibrate_bn,
    probe_inputs,
    sensitivity,
    trained_like,
    verify,
)

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "MORPHS", "SENSITIVITY_FLOOR", "TOLERANCE", "MorphContext", "MorphRecord", "MorphResult", "MorphSpec",
    "Verification", "apply_morph", "calibrate_bn", "get_morph", "probe_inputs", "register", "replay",
    "sensitivity", "trained_like", "verify",
]
