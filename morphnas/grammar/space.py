"""Search spaces: YAML files validated with pydantic.

A search space names the seed network and its training, the data set, the grammar rules the
search may use (each with a weight and parameter ranges), limits on the children's cost, the
fine-tuning each child gets, the budget, and how parents are selected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from morphnas.errors import ConfigError

# Package data in a wheel; in a source checkout a link to the repository's search_spaces/.
SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """A numeric parameter range; ``log`` samples on a log scale, ``int`` rounds to integers."""

    low: float
    high: float
    log: bool = False
    int: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


ParamSpec = list[Any] | Range


class RuleConfig(_Strict):
    weight: float = Field(1.0, gt=0)
    params: dict[str, ParamSpec] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _non_empty_choices(cls, params: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        for name, spec in params.items():
            if isinstance(spec, list) and not spec:
                raise ValueError(f"parameter {name!r} has no choices")
        return params


class SeedConfig(_Strict):
    """The seed network and its training; with a time budget ``epochs`` is an upper bound.

    ``arch``: a built-in seed, an architecture JSON file, ``torchvision:NAME``, ``MODULE:ATTR``
    (a PyTorch network, imported) or a checkpoint directory (a warm start from its weights).
    ``weights``: a safetensors file of weights for a built-in seed or an architecture JSON file.
    """

    arch: str = "resnet20"
    weights: str | None = None
    shortcut: Literal["A", "B"] = "A"
    epochs: float = Field(5.0, gt=0)
    lr: float = Field(0.1, gt=0)
    batch_size: int = Field(128, gt=0)


class DataConfig(_Strict):
    name: str = "mnist5k"
    data_root: str | None = None
    split_seed: int = 0
    augment: bool | str = Field(True, description="true: the data set's training augmentation (shifts for "
                                "MNIST); false: none; or a kind: none, shift, affine, crop_flip, "
                                "crop_flip_erase")
    image_size: int = Field(32, gt=0, description="imagefolder:DIR images are resized and cropped to this")


class Limits(_Strict):
    max_params: int | None = Field(None, gt=0)
    max_macs: int | None = Field(None, gt=0)


class FineTune(_Strict):
    """How children are fine-tuned: each child's run is one warm restart (``schedule`` from ``lr``),
    or, with ``schedule: lineage``, a stretch of the one cosine cycle of ``seed.lr`` its lineage
    follows over the whole budget: a rung holds the rate of the moment it starts, and the final
    phase anneals from there to zero (``lr`` here and ``final.lr`` are then unused).

    ``epochs`` is a range Optuna samples per child, or a number. ``halving`` turns on successive
    halving across a generation: all children train ``epochs`` (a number, so they compare on
    equal terms), then only the best ``1 / halving`` of them (by the selection metric) train on
    for ``halving`` times the epochs of the rung before, until one child is left and has trained
    its rung; the others end as pruned trials. None: every child trains once, to completion.
    """

    lr: Range = Range(low=0.005, high=0.05, log=True)
    epochs: Range | float = Range(low=1, high=2, int=True)
    batch_size: int = Field(128, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step", "constant", "lineage"] = "cosine"
    halving: int | None = Field(None, ge=2)
    pruner: Literal["median", "none"] = Field(
        "median", description="median: a child whose validation error after an epoch is worse than the median of "
        "the trials before it at that epoch stops (Optuna's MedianPruner, once four trials have finished); none: "
        "never. Successive halving and several objectives prune by their own rules instead",
    )

    @model_validator(mode="after")
    def _fixed_rung(self) -> FineTune:
        if self.halving is not None and isinstance(self.epochs, Range):
            raise ValueError("with halving, epochs must be one number: the first rung's epochs for every child")
        if isinstance(self.epochs, float) and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        return self


class Final(_Strict):
    """The final phase: the best network trained on with a learning rate decaying to zero.

    With a time budget it gets ``budget.final_share`` of it and ``epochs`` is an upper bound.
    ``final: null`` in a space turns it off (the generations then run to the end of the budget).
    """

    lr: float = Field(0.05, gt=0)
    epochs: float = Field(10.0, gt=0)
    batch_size: int = Field(128, gt=0)
    weight_decay: float = Field(1e-4, ge=0)


class Budget(_Strict):
    generations: int = Field(4, gt=0, description="at most this many; a time budget may end them sooner")
    children: int = Field(4, gt=0)
    time_budget: float | None = Field(None, gt=0, description="seconds")
    seed_share: float = Field(0.25, gt=0, lt=1, description="of the time budget, for training the seed")
    final_share: float = Field(0.35, gt=0, lt=1, description="of the time budget, for the final phase")

    @model_validator(mode="after")
    def _shares(self) -> Budget:
        if self.seed_share + self.final_share >= 1:
            raise ValueError("seed_share + final_share must leave time for the generations (sum < 1)")
        return self

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value


class Selection(_Strict):
    selector: str = Field("best_lineages", description="the parent-selection strategy, by the name of its "
                          "ParentSelector (morphnas.search.lineages); the study keeps it for a resume")
    parents: int = Field(2, gt=0, description="how many of the best trials may parent a generation")
    max_children_per_parent: int | None = Field(None, gt=0)
    metric: Literal["loss", "error"] = Field(
        "loss", description="what ranks parents and the final network: validation loss or 0/1 error"
    )
    control: bool = Field(
        False, description="a generation's first child is its best parent trained on unmorphed, so that a morph "
        "goes on only when it beats training on (one of budget.children)",
    )


class SearchSpace(_Strict):
    name: str = "default"
    dataset: DataConfig = DataConfig()
    seed: SeedConfig = SeedConfig()
    rules: dict[str, RuleConfig]
    limits: Limits = Limits()
    finetune: FineTune = FineTune()
    final: Final | None = Final()  # None (``final: null``): no final phase, the generations take its time
    budget: Budget = Budget()
    selection: Selection = Selection()
    objectives: list[Literal["error", "macs", "params"]] = ["error"]

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, rules: dict[str, RuleConfig]) -> dict[str, RuleConfig]:
        from morphnas.grammar.rules import RULES

        if not rules:
            raise ValueError("a search space needs at least one rule")
        unknown = sorted(set(rules) - set(RULES))
        if unknown:
            raise ValueError(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(sorted(RULES))}")
        for name, config in rules.items():
            RULES[name].check_params(config.params)
        return rules

    @field_validator("objectives")
    @classmethod
    def _error_first(cls, objectives: list[str]) -> list[str]:
        if not objectives or objectives[0] != "error" or len(set(objectives)) != len(objectives):
            raise ValueError("objectives must start with 'error' and not repeat, e.g. [error, macs]")
        return objectives


class Overrides(_Strict):
    """Values that replace a search space's, as ``morphnas search``'s flags give them (None keeps
    the space's own). :meth:`apply` is the one place a space is overridden. A resumed study keeps
    the space it was started with, but for the budget flags given again (:data:`RESUMABLE`).

    >>> space = parse_space({"rules": {"widen": {}}})
    >>> Overrides(time_budget=600, generations=9).apply(space, "the flags").budget.time_budget
    600.0
    """

    generations: int | None = None
    children: int | None = None
    time_budget: float | None = None  # seconds
    finetune_epochs: float | None = None
    seed_epochs: float | None = None
    objectives: list[str] | None = None
    dataset: str | None = None
    data_root: str | None = None

    def apply(self, space: SearchSpace, origin: str, resume: bool = False) -> SearchSpace:
        """``space`` with these values (on a ``resume`` only those of :data:`RESUMABLE`), validated
        as a whole: a bad value raises ConfigError naming ``origin`` and the space's field."""
        data = space.model_dump(mode="json")
        for name, (*sections, key) in TARGETS.items():
            value = getattr(self, name)
            if value is None or (resume and name not in RESUMABLE):
                continue
            target = data
            for section in sections:
                target = target[section]
            target[key] = value
        return parse_space(data, origin)


TARGETS = {  # the field of a space each override replaces
    "generations": ("budget", "generations"), "children": ("budget", "children"),
    "time_budget": ("budget", "time_budget"), "finetune_epochs": ("finetune", "epochs"),
    "seed_epochs": ("seed", "epochs"), "objectives": ("objectives",), "dataset": ("dataset", "name"),
    "data_root": ("dataset", "data_root"),
}
RESUMABLE = frozenset({"generations", "children", "time_budget", "finetune_epochs"})

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def parse_duration(text: str) -> float:
    """``"90"`` or ``"90s"`` -> 90.0, ``"10m"`` -> 600.0, ``"1.5h"`` -> 5400.0."""
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(f"a duration must look like 90s, 10m or 1h, got {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def load_space(path_or_name: str | Path | None = None) -> SearchSpace:
    """A search space from a YAML file, or by name from ``search_spaces/`` (default: ``default``)."""
    path = Path(path_or_name or "default")
    if not path.exists() and (SPACES_DIR / f"{path}.yaml").exists():
        path = SPACES_DIR / f"{path}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read search space {str(path)!r}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read search space {str(path)!r}: not a UTF-8 text file") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"{path}: malformed YAML{line}: {getattr(err, 'problem', err)}") from None
    return parse_space(data, str(path))


def parse_space(data: Any, origin: str = "search space") -> SearchSpace:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a search space must be a mapping")
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc, msg = first["loc"], first["msg"]
        if first["type"] == "literal_error":  # name the bad value and the choices, not its index in a list
            loc = tuple(p for p in loc if not isinstance(p, int))
            msg = f"{first['input']!r} is not one of {first['ctx']['expected']}"
        where = ".".join(str(p) for p in loc) or "top level"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise ConfigError(f"{origin}: {where}: {msg}{more}") from None
