"""morphnas: neural architecture search by exact network morphisms.

The public API, re-exported from the packages that implement it::

    graph = morphnas.load_arch("resnet20", (1, 28, 28), 10)     # the architecture graph
    child = morphnas.apply_morph("widen", graph, weights, "s1b0_relu1", {"factor": 2.0})
    morphnas.verify(graph, weights, child.graph, child.weights)  # max relative error
    summary = morphnas.run_search(morphnas.SearchOptions(space=morphnas.load_space("default")))
    frame = morphnas.load_trials(summary.storage, summary.study)  # pandas DataFrame
    model = morphnas.load("runs/.../trials/00007")                # nn.Module from safetensors + JSON
"""

__version__ = "0.1.0"

from morphnas.errors import MorphnasError  # noqa: E402
from morphnas.export import load  # noqa: E402
from morphnas.grammar import classify, reduce_module, solve  # noqa: E402
from morphnas.grammar.space import load_space  # noqa: E402
from morphnas.ir import ArchGraph, compile_graph, cost, init_weights, load_arch  # noqa: E402
from morphnas.morph import REGISTRY, apply_morph, replay, verify  # noqa: E402
from morphnas.search import SearchOptions, load_trials, run_search  # noqa: E402
from morphnas.train import TrainConfig, load_dataset, train  # noqa: E402

__all__ = [
    "REGISTRY", "ArchGraph", "MorphnasError", "SearchOptions", "TrainConfig", "__version__", "apply_morph",
    "classify", "compile_graph", "cost", "init_weights", "load", "load_arch", "load_dataset", "load_space",
    "load_trials", "reduce_module", "replay", "run_search", "solve", "train", "verify",
]
