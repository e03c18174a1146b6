"""Define-by-run sampling of grammar descriptors through an Optuna trial."""

from __future__ import annotations

import json
from typing import Any

import optuna

from morphnas.grammar.rules import Descriptor
from morphnas.grammar.space import Range, RuleConfig

_PRIMITIVE = (type(None), bool, int, float, str)


def suggest_value(trial: optuna.Trial, name: str, spec: list[Any] | Range) -> Any:
    """One parameter: a categorical choice or a numeric range (Optuna stores non-scalars as JSON)."""
    if isinstance(spec, Range):
        if spec.int:
            return trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log)
        return trial.suggest_float(name, spec.low, spec.high, log=spec.log)
    if all(isinstance(choice, _PRIMITIVE) for choice in spec):
        return trial.suggest_categorical(name, spec)
    return json.loads(trial.suggest_categorical(name, [json.dumps(choice) for choice in spec]))


def suggest_descriptor(trial: optuna.Trial, rules: dict[str, RuleConfig]) -> Descriptor:
    """Rule (by weight), relative position and the rule's parameters, asked of ``trial``.

    The rule is drawn by inverting the cumulative rule weights at a uniform ``rule_u``, so a
    random sampler honours the weights and a model-based one (TPE) learns which rules pay off.
    """
    names = sorted(rules)
    total = sum(rules[n].weight for n in names)
    u = trial.suggest_float("rule_u", 0.0, 1.0) * total
    rule, acc = names[-1], 0.0
    for name in names:
        acc += rules[name].weight
        if u < acc:
            rule = name
            break
    position = trial.suggest_float("position", 0.0, 1.0)
    params = {p: suggest_value(trial, f"{rule}.{p}", spec) for p, spec in sorted(rules[rule].params.items())}
    return Descriptor(rule, position, params)
