"""The graph grammar: rules that turn a sampled descriptor into a morph of a network
(:mod:`~morphnas.grammar.rules`), how a trial samples one (:mod:`~morphnas.grammar.sampling`) and
the YAML search space (:mod:`~morphnas.grammar.space`).

The module algebra (Algorithms 1 and 2) lives in :mod:`morphnas.modules`; every morph, the
grammar's ``morph_module`` included, registers from :mod:`morphnas.morph`.
"""
