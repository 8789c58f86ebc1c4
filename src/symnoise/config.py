"""`NoiseConfig`: which noise, how strong, where and when. Validated when built, before any model is touched."""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass
from typing import Any

from .methods import METHOD_ALIASES, METHOD_TABLE, METHODS

LENGTH_MODES = ("tokens", "padded")
REGIONS = ("all", "prompt", "response")
SCHEDULES = ("constant", "linear", "cosine")
EXECUTIONS = ("concat", "paired")


def _choice(field_name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(
            f"NoiseConfig.{field_name} must be a string, one of {', '.join(allowed)}; got {value!r}"
        )
    if value not in allowed:
        raise ValueError(
            f"NoiseConfig.{field_name}={value!r} is not allowed; choose one of {', '.join(allowed)}"
        )
    return value


def _number(field_name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"NoiseConfig.{field_name} must be a number; got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"NoiseConfig.{field_name} must be a finite number >= 0; got {value!r}")
    return value


def _count(field_name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"NoiseConfig.{field_name} must be an integer >= 1; got {value!r}")
    if value < 1:
        raise ValueError(f"NoiseConfig.{field_name} must be an integer >= 1; got {value!r}")
    return value


def _flag(field_name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"NoiseConfig.{field_name} must be true or false; got {value!r}")
    return value


@dataclass(frozen=True)
class NoiseConfig:
    """Embedding noise for fine-tuning, as specified in the NEFTune and SymNoise papers.

    Attributes:
        method: ``none``, ``uniform`` (NEFTune; alias ``neftune``), ``gaussian``, ``bernoulli`` or ``symnoise``.
        alpha: base scale; the noise of an example of ``L`` real tokens and width ``d`` is scaled by
            ``alpha / sqrt(L * d)``. Paper default 5.
        match_uniform_norm: divide Gaussian and Bernoulli noise by sqrt(3) so their expected norm equals
            NEFTune's (``alpha / sqrt(3)``). ``False`` gives the paper's unmatched "Gaussian Noise 5" row.
        symmetric: train on both ``X + eps`` and ``X - eps`` with the same ``eps``. Defaults to on for
            ``symnoise`` and off otherwise; may be switched on for any distribution as a research option.
        execution: how the views of one example (the symmetric pair, several draws) run: ``concat`` (one
            forward over the batch repeated once per view; for the pair this is the paper's doubled batch) or
            ``paired`` (one forward and backward per view, each loss weighted ``1/views``, gradients accumulated:
            lower peak memory). One view (one-sided, ``draws=1``) runs as one ordinary forward either way.
        length_mode: ``tokens`` uses each sequence's real length and leaves padding untouched (the papers'
            experiments); ``padded`` uses the padded batch length and noises padding (transformers' formula).
        region: noise ``all`` real tokens (the papers), or only the ``prompt`` or the ``response`` tokens
            (those with ``labels == -100`` or not). ``L`` then counts the noised tokens, so the expected norm
            per example stays as in the table.
        schedule: ``constant`` alpha, or ``linear`` / ``cosine`` decay from ``alpha`` to ``alpha_floor`` over
            training.
        alpha_floor: the value a decaying schedule ends at; must not exceed ``alpha``.
        seed: seed of the noise generator (each distributed rank derives its own stream from it). ``None``
            derives it from torch's initial seed, so ``torch.manual_seed`` / ``transformers.set_seed`` fix it.
        draws: independent noise draws per example and step (default 1); the loss is the mean over them. Each
            draw is one more view of the example in the step, run like the symmetric pair's second view (see
            ``execution``), so ``bernoulli`` or ``uniform`` with ``draws=2`` costs what SymNoise costs (two noisy
            views per example) and is its compute-matched control. With ``symmetric`` each draw is an antithetic
            pair: ``draws=K`` trains on ``K`` pairs ``X +- eps_k``, ``2K`` views. The noise stream advances by
            ``draws`` per training forward (micro-batch), so a resumed run continues it exactly. A method
            without noise (``none``) draws nothing, so ``draws`` changes nothing there.
    """

    method: str = "symnoise"
    alpha: float = 5.0
    match_uniform_norm: bool = True
    symmetric: bool | None = None
    execution: str = "concat"
    length_mode: str = "tokens"
    region: str = "all"
    schedule: str = "constant"
    alpha_floor: float = 0.0
    seed: int | None = None
    draws: int = 1

    def __post_init__(self) -> None:
        method = self.method
        if isinstance(method, str):  # names are case-insensitive: NEFTune, SymNoise, Gaussian
            method = METHOD_ALIASES.get(method.lower(), method.lower())
        set_ = object.__setattr__
        set_(self, "method", _choice("method", method, METHODS + tuple(METHOD_ALIASES)))
        set_(self, "alpha", _number("alpha", self.alpha))
        set_(self, "alpha_floor", _number("alpha_floor", self.alpha_floor))
        set_(self, "match_uniform_norm", _flag("match_uniform_norm", self.match_uniform_norm))
        set_(self, "execution", _choice("execution", self.execution, EXECUTIONS))
        set_(self, "length_mode", _choice("length_mode", self.length_mode, LENGTH_MODES))
        set_(self, "region", _choice("region", self.region, REGIONS))
        set_(self, "schedule", _choice("schedule", self.schedule, SCHEDULES))
        if self.symmetric is None:
            set_(self, "symmetric", METHOD_TABLE[self.method].symmetric)
        set_(self, "symmetric", _flag("symmetric", self.symmetric))
        set_(self, "draws", _count("draws", self.draws))
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"NoiseConfig.seed must be an integer or None; got {self.seed!r}")
        if self.alpha_floor > self.alpha:
            raise ValueError(
                f"NoiseConfig.alpha_floor={self.alpha_floor} is above alpha={self.alpha}; "
                "a schedule decays alpha down to the floor, so the floor must be <= alpha"
            )
        if METHOD_TABLE[self.method].distribution is None and self.symmetric:
            raise ValueError(
                f"NoiseConfig.symmetric=True needs a noise method; method={self.method!r} adds no noise to pair"
            )
        if self.length_mode == "padded" and self.region != "all":
            raise ValueError(
                "NoiseConfig.length_mode='padded' reproduces transformers' formula, which noises every position; "
                "it cannot be combined with region='prompt' or 'response'"
            )

    @property
    def distribution(self) -> str:
        """The per-element distribution: ``uniform``, ``gaussian`` or ``bernoulli`` (``none`` for no noise)."""
        return METHOD_TABLE[self.method].distribution or "none"

    @property
    def is_active(self) -> bool:
        """Whether this config can ever change a forward pass."""
        return METHOD_TABLE[self.method].distribution is not None and self.alpha > 0

    @property
    def views(self) -> int:
        """How many noisy views of each example one training step runs: ``draws``, twice that for the symmetric
        pair; 1 for a method without noise."""
        if METHOD_TABLE[self.method].distribution is None:
            return 1
        return self.draws * (2 if self.symmetric else 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            allowed = ", ".join(cls.__dataclass_fields__)
            hints = [
                f"{name} (did you mean {close[0]}?)" if close else name
                for name in unknown
                for close in [
                    difflib.get_close_matches(name, list(cls.__dataclass_fields__), n=1, cutoff=0.6)
                ]
            ]
            raise ValueError(f"unknown NoiseConfig field(s) {', '.join(hints)}; allowed: {allowed}")
        return cls(**data)
