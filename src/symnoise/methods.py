"""The noise methods: one table that every other module reads.

A method is a name users write in a config (``noise.method``), the distribution its noise is drawn from, whether
it trains on the symmetric pair ``X + eps`` / ``X - eps`` by default, the label reports give it and the tag a
model card carries. Adding a method means adding a row here (and, for a new distribution, a branch in
`symnoise.noise.sample_unit_noise`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One noise method.

    Attributes:
        name: the value of ``noise.method``.
        distribution: what `symnoise.noise.sample_unit_noise` draws (``None``: no noise).
        symmetric: the default of ``NoiseConfig.symmetric`` for this method.
        label: the row name in reports and tables ("NEFT 5", "SymNoise 5").
        card_tag: the tag a trained model's card carries on the hub (``None``: no tag).
        aliases: other names accepted for it in configs.
    """

    name: str
    distribution: str | None
    symmetric: bool
    label: str
    card_tag: str | None
    aliases: tuple[str, ...] = ()


METHOD_TABLE: dict[str, Method] = {
    method.name: method
    for method in (
        Method("none", None, False, "base", None),
        Method("uniform", "uniform", False, "NEFT", "neftune", aliases=("neftune", "neft")),
        Method("gaussian", "gaussian", False, "Gaussian", "gaussian-noise"),
        Method("bernoulli", "bernoulli", False, "Bernoulli", "bernoulli-noise"),
        Method("symnoise", "bernoulli", True, "SymNoise", "symnoise"),
    )
}
METHODS: tuple[str, ...] = tuple(METHOD_TABLE)
METHOD_ALIASES: dict[str, str] = {alias: m.name for m in METHOD_TABLE.values() for alias in m.aliases}


def get_method(name: str) -> Method:
    """The method called ``name`` (or one of its aliases); ``KeyError`` for an unknown name."""
    return METHOD_TABLE[METHOD_ALIASES.get(name, name)]
