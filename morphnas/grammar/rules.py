"""The graph grammar: rules that turn a sampled descriptor into a concrete morph of a network.

A descriptor is (rule, relative position in [0, 1], rule parameters). The position picks a site
among the rule's applicable sites in program order (input to output), so the same descriptor
means "early", "middle" or "late" in any network, and keeps its meaning after a morph elsewhere:
an Optuna sampler can learn which descriptors pay off.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from morphnas.errors import ConfigError, MorphError
from morphnas.ir import ArchGraph, Weights
from morphnas.morph import MorphResult, apply_morph, get_morph

ParamAdapter = Callable[[ArchGraph, str, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Descriptor:
    rule: str
    position: float
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "position": self.position, "params": dict(self.params)}


def _widen_params(graph: ArchGraph, site: str, params: dict[str, Any]) -> dict[str, Any]:
    """``factor`` (search-space friendly) -> ``channels`` (what the widen morph takes)."""
    params = dict(params)
    factor = float(params.pop("factor", 1.5))
    current = graph.shapes()[site][0]
    params["channels"] = max(current + 1, math.ceil(current * factor))
    return params


@dataclass(frozen=True)
class Rule:
    """One grammar rule: which morph it applies and which parameters it accepts."""

    name: str
    morph: str
    params: frozenset[str] = frozenset()
    adapt: ParamAdapter | None = None
    summary: str = ""

    def check_params(self, params: dict[str, Any]) -> None:
        unknown = sorted(set(params) - self.params)
        if unknown:
            allowed = ", ".join(sorted(self.params)) or "none"
            raise ValueError(f"rule {self.name!r} has no parameter(s) {', '.join(unknown)} (allowed: {allowed})")

    def sites(self, graph: ArchGraph) -> list[str]:
        return get_morph(self.morph).sites(graph)

    def site_at(self, graph: ArchGraph, position: float) -> str:
        sites = self.sites(graph)
        if not sites:
            raise MorphError(f"rule {self.name!r} has no site in this network")
        return sites[min(len(sites) - 1, int(position * len(sites)))]

    def apply(
        self,
        graph: ArchGraph,
        weights: Weights,
        descriptor: Descriptor,
        *,
        seed: int,
        calibration: torch.Tensor | None = None,
    ) -> MorphResult:
        site = self.site_at(graph, descriptor.position)
        defaults = get_morph(self.morph).default_params(graph, site, torch.Generator().manual_seed(seed))
        params = {**defaults, **descriptor.params}
        if self.adapt is not None:
            params = self.adapt(graph, site, params)
        return apply_morph(self.morph, graph, weights, site, params, seed=seed, calibration=calibration)


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("deepen", "deepen", frozenset({"init", "kernels"}), summary="TYPE-I: one layer becomes two"),
        Rule("branch", "branch", frozenset({"kernels"}), summary="TYPE-II: one conv becomes two in parallel"),
        Rule("widen", "widen", frozenset({"factor"}), _widen_params, "more channels on a blob"),
        Rule("grow_kernel", "grow_kernel", frozenset({"kernel"}), summary="kernel k -> k + 2"),
        Rule("insert_pact", "insert_pact", frozenset({"kind"}), summary="a parametric activation at a = 1"),
        Rule("insert_bn", "insert_bn", summary="an identity batch norm"),
        Rule("add_skip", "add_skip", summary="a zero-initialised skip connection"),
        Rule("split_identity", "split_identity", summary="identity -> 0.5 I + 0.5 I"),
        Rule("identity_to_conv_path", "identity_to_conv_path", frozenset({"kernels"}),
             summary="scaled identity -> conv k1 -> BN -> P-act -> conv k2 -> BN"),
        Rule("module", "morph_module", frozenset({"template", "width"}), summary="one conv -> a module (Theorem 8)"),
        # MorphNet's shrink and expand steps (Gordon et al., CVPR 2018, Algorithm 1 steps 2-3) as
        # search moves: shrink drops the lowest-|gamma| fraction of one channel group (the position
        # picks the group; no regularised training, the child's fine-tuning follows), expand
        # multiplies every width. With objectives [error, macs] a search trades width for accuracy.
        Rule("shrink", "shrink", frozenset({"fraction"}),
             summary="MorphNet shrink: drop a group's lowest-|gamma| channels (approximate)"),
        Rule("expand", "expand", frozenset({"factor"}), summary="MorphNet expand: every width x factor (exact)"),
    )
}


def get_rule(name: str) -> Rule:
    if name not in RULES:
        raise ConfigError(f"unknown rule {name!r}; known: {', '.join(sorted(RULES))}")
    return RULES[name]
