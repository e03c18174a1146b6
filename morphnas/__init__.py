"""morphnas: neural architecture search by exact network morphisms.

The public API, re-exported from the packages that implement it::

    graph = morphnas.load_arch("resnet20", (1, 28, 28), 10)     # the architecture graph
    child = morphnas.apply_morph("widen", graph, weights, "s1b0_relu1", {"factor": 2.0})
    morphnas.verify(graph, weights, child.graph, child.weights)  # max relative error
    summary = morphnas.run_search(morphnas.SearchOptions(space=morphnas.load_space("default")))
    frame = morphnas.load_trials(summary.storage, summary.study)  # pandas DataFrame
    model = morphnas.load("runs/.../trials/00007")                # nn.Module from safetensors + JSON
    graph, weights, err = morphnas.from_torch(torchvision.models.resnet18(), (3, 224, 224))

The API is imported on first use (PEP 562), so ``import morphnas`` and the ``morphnas`` command
start without torch.
"""

import importlib

__version__ = "0.1.0"

# Each public name and the module that defines it, in the order the modules were always imported.
_SOURCES = {
    "MorphnasError": "morphnas.errors",
    "load": "morphnas.export",
    "classify": "morphnas.modules",
    "reduce_module": "morphnas.modules",
    "solve": "morphnas.modules",
    "load_space": "morphnas.grammar.space",
    "ArchGraph": "morphnas.ir",
    "compile_graph": "morphnas.ir",
    "cost": "morphnas.ir",
    "from_torch": "morphnas.ir",
    "init_weights": "morphnas.ir",
    "load_arch": "morphnas.ir",
    "MORPHS": "morphnas.morph",
    "apply_morph": "morphnas.morph",
    "replay": "morphnas.morph",
    "verify": "morphnas.morph",
    "SearchOptions": "morphnas.search",
    "load_trials": "morphnas.search",
    "run_search": "morphnas.search",
    "TrainConfig": "morphnas.train",
    "load_dataset": "morphnas.train",
    "train": "morphnas.train",
}

__all__ = ["__version__", *_SOURCES]


def __getattr__(name: str):
    """Import the whole API when any of it is first used (``morphnas.morph`` registers every morph)."""
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for attr, module in _SOURCES.items():
        globals()[attr] = getattr(importlib.import_module(module), attr)
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
