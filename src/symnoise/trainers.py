"""What `symnoise.hf.add_noise` needs to know about the trainer it is added to.

Two questions decide how noise meets a trainer:

* **Who computes the loss?** When the trainer takes the model's own loss (``Trainer.compute_loss`` without label
  smoothing or ``compute_loss_func``; TRL's ``SFTTrainer`` with its NLL loss), the views of an example (SymNoise's
  pair, ``draws > 1``) can run as one forward over the repeated batch (``concat``): that loss is linear in the
  per-token outputs, so it is the mean over the views (``X + eps`` and ``X - eps`` for the pair). Any other trainer
  (TRL's DPO, KTO, ORPO, CPO, label smoothing, a custom ``compute_loss_func``, a ``compute_loss`` override)
  computes a loss that is not linear in the model's outputs; there the views run as one pass each (the pair's
  sharing ``eps``) around the trainer's whole ``compute_loss`` (``paired``), so the objective is the mean of the
  trainer's loss over the views.
* **Which passes train the policy?** Only the policy's forwards that record gradients get noise. Forwards of the
  policy without gradients (reference log-probabilities of a PEFT policy with its adapters disabled, KTO's KL
  baseline, metric-only probes) and forwards with the adapters disabled or TRL's ``ref`` adapter active are kept
  clean by `CleanPassGuard`. A separate ``ref_model`` has no hooks at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from typing import Any

import torch
from torch import nn

from .attach import NoiseHandle, get_handle, unwrap_model
from .config import NoiseConfig
from .methods import METHOD_TABLE

logger = logging.getLogger(__name__)

# TRL trainers whose loss compares the policy with a reference model (or reference log-probabilities).
REFERENCE_TRAINERS = ("DPOTrainer", "KTOTrainer")
# TRL trainers whose training_step trains on the batch it is given, so it can run several times on one batch
# (one pass per noisy view: the pair, several draws). Online trainers (GRPO, RLOO, online DPO...) generate or
# slice a buffer inside training_step: a second call would train on other samples.
FIXED_BATCH_TRL = ("SFTTrainer", "DPOTrainer", "KTOTrainer", "ORPOTrainer", "CPOTrainer", "RewardTrainer")
# TRL versions whose reference path was read: the reference forward of a PEFT policy runs under torch.no_grad()
# with the adapters disabled (or the "ref" adapter active). Newer majors are refused until checked.
RECOGNISED_TRL = (1, 0), (2, 0)
_REF_ADAPTER = "ref"
# The methods that need no pair, named in the messages that refuse several views.
ONE_SIDED = ", ".join(m.name for m in METHOD_TABLE.values() if m.distribution is not None and not m.symmetric)


def trl_class(trainer: Any) -> type | None:
    """The first TRL trainer class in ``trainer``'s class hierarchy (``SFTTrainer``, ``DPOTrainer``...)."""
    for cls in type(trainer).__mro__:
        if cls.__module__.split(".")[0] == "trl" and cls.__name__.endswith("Trainer"):
            return cls
    return None


def trl_class_name(trainer: Any) -> str | None:
    cls = trl_class(trainer)
    return None if cls is None else cls.__name__


def loss_outside_model(trainer: Any) -> str | None:
    """Why ``trainer`` computes its loss from the model's outputs rather than taking the model's own loss, or None
    when it takes the model's loss (the case where SymNoise's ``concat`` execution is exact)."""
    from transformers import Trainer

    if getattr(trainer, "label_smoother", None) is not None:
        return "label_smoothing_factor > 0 (the Trainer smooths the loss from the logits)"
    if getattr(trainer, "compute_loss_func", None) is not None:
        return "compute_loss_func computes the loss from the logits"
    library_class = trl_class(trainer) or Trainer
    if type(trainer).compute_loss is not library_class.compute_loss:
        return f"{type(trainer).__name__} overrides compute_loss"
    name = trl_class_name(trainer)
    if name == "SFTTrainer":
        loss_type = getattr(trainer.args, "loss_type", "nll")
        if loss_type != "nll":
            return f"SFTTrainer's loss_type={loss_type!r} weighs each token by its own probability"
        return None
    if name is not None:
        return f"TRL's {name} computes its loss from the model's per-token outputs"
    return None


def execution_for(trainer: Any, config: NoiseConfig) -> NoiseConfig:
    """``config``, with several views per example (the symmetric pair, ``draws > 1``) switched to ``paired``
    execution where the trainer computes the loss itself (`loss_outside_model`): one forward over the repeated
    batch would give that loss the mean of the views' outputs instead of the mean of the views' losses."""
    name = trl_class_name(trainer)
    views = _views_phrase(config)
    if config.views > 1 and name is not None and name not in FIXED_BATCH_TRL:
        raise ValueError(
            f"symnoise: {views} needs every pass on one batch, and TRL's {name} builds its "
            f"batches inside training_step (checked: {', '.join(FIXED_BATCH_TRL)}); use a one-sided "
            f"method ({ONE_SIDED}) with draws=1 with it"
        )
    reason = loss_outside_model(trainer)
    if config.views == 1 or config.execution == "paired" or reason is None:
        return config
    if getattr(trainer, "is_deepspeed_enabled", False):
        raise ValueError(
            f"symnoise: {reason}, so {views} must run as one pass each, which "
            f"DeepSpeed turns into as many optimizer steps; use a one-sided method ({ONE_SIDED}) with draws=1 "
            "with DeepSpeed for this trainer"
        )
    logger.info("symnoise: %s, so %s runs as one pass each (execution='paired')", reason, views)
    return dataclasses.replace(config, execution="paired")


def _views_phrase(config: NoiseConfig) -> str:
    """How the messages name the views of one example: "the symmetric pair", "2 draws per example", ..."""
    if config.draws == 1:
        return "the symmetric pair (two passes sharing eps)"
    if config.symmetric:
        return f"{config.draws} symmetric pairs per example ({config.views} views)"
    return f"{config.draws} noise draws per example"


def trl_version() -> tuple[int, ...] | None:
    try:
        import trl
    except ImportError:
        return None
    parts = []
    for part in str(getattr(trl, "__version__", "")).split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def reference_on_policy(trainer: Any) -> bool:
    """True when a TRL preference trainer computes its reference log-probabilities during training with the policy
    model itself (a PEFT policy without ``ref_model``, reference not precomputed)."""
    if trl_class_name(trainer) not in REFERENCE_TRAINERS:
        return False
    if getattr(trainer, "ref_model", None) is not None or getattr(
        trainer.args, "precompute_ref_log_probs", False
    ):
        return False
    return _is_peft(trainer.model)


def check_trainer(trainer: Any) -> None:
    """Refuse setups where symnoise cannot guarantee clean reference passes, before anything trains."""
    name = trl_class_name(trainer)
    ref_model = getattr(trainer, "ref_model", None)
    if ref_model is not None and unwrap_model(ref_model) is unwrap_model(trainer.model):
        raise ValueError(
            f"{name}'s ref_model shares its model with the policy; its passes would be noised. "
            "Give the trainer a separate reference model, or none with a PEFT policy"
        )
    if ref_model is not None and get_handle(ref_model) is not None:
        raise ValueError(
            f"symnoise noise is attached to {name}'s ref_model; reference passes must stay clean"
        )
    if reference_on_policy(trainer):
        version = trl_version()
        low, high = RECOGNISED_TRL
        if version is None or not low <= version < high:
            raise RuntimeError(
                f"symnoise.add_noise: {name} computes its reference log-probabilities with the PEFT policy, and "
                f"symnoise has not checked how TRL {'.'.join(map(str, version or ()))} does that "
                f"(checked: TRL >= {low[0]}.{low[1]}, < {high[0]}.{high[1]}), so it cannot promise a clean reference. "
                "Pass a separate ref_model, or set precompute_ref_log_probs=True (computed before the noise is "
                "attached), or use a recognised TRL version"
            )


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and callable(getattr(model, "disable_adapter", None))


def _first_tuner_layer(model: nn.Module) -> nn.Module | None:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return None
    return next((m for m in model.modules() if isinstance(m, BaseTunerLayer)), None)


class CleanPassGuard:
    """Hooks on the policy model that run its reference and probe forwards with ``noise_off()``.

    A forward of the policy is clean when it records no gradients (``torch.no_grad``/``inference_mode``: it cannot
    train the policy, so it is a reference, a probe or a metric) or when its PEFT adapters are disabled or TRL's
    ``ref`` adapter is active (the model is then the reference, whatever the grad mode). ``reference_passes``
    counts the forwards seen with the reference adapters, so a trainer whose reference runs on the policy can be
    checked to have had one in every training step.
    """

    def __init__(self, trainer: Any, handle: NoiseHandle):
        self.handle = handle
        self.peft_model = trainer.model if _is_peft(trainer.model) else None
        self.tuner_layer = _first_tuner_layer(self.peft_model) if self.peft_model is not None else None
        self.reference_passes = 0
        self._open: list[contextlib.AbstractContextManager] = []
        self._hooks = [
            # prepend: decide before the noise pre-hook registered by attach() records the call
            handle.model.register_forward_pre_hook(self._before_forward, prepend=True),
            handle.model.register_forward_hook(self._after_forward, always_call=True),
        ]

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        while self._open:
            self._open.pop().__exit__(None, None, None)

    def reference_adapters_active(self) -> bool:
        """True while the PEFT policy acts as the reference: adapters disabled, or TRL's ``ref`` adapter active."""
        if self.peft_model is None:
            return False
        if self.tuner_layer is not None and self.tuner_layer.disable_adapters:
            return True
        return _REF_ADAPTER in self.peft_model.peft_config and self.peft_model.active_adapter == _REF_ADAPTER

    def _before_forward(self, module: nn.Module, args: tuple) -> None:
        reference = self.reference_adapters_active()
        self.reference_passes += reference
        clean = reference or not torch.is_grad_enabled()
        context = self.handle.noise_off() if clean else contextlib.nullcontext()
        context.__enter__()
        self._open.append(context)

    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._open:
            self._open.pop().__exit__(None, None, None)


class TrainerIntegration:
    """The trainer-specific part of an attachment: the clean-pass guard, the clean public reference method, the
    per-step reference check, and TRL's token counter across the passes of the views. Installed for one
    ``train()`` call."""

    def __init__(self, trainer: Any):
        check_trainer(trainer)
        self.trainer = trainer
        self.guard: CleanPassGuard | None = None
        self.check_reference = reference_on_policy(trainer)
        self._patched: dict[str, Any] = {}

    def install(self, handle: NoiseHandle) -> None:
        self.guard = CleanPassGuard(self.trainer, handle)
        reference_method = getattr(self.trainer, "compute_ref_log_probs", None)
        if callable(reference_method):  # TRL's public reference computation (also used to precompute)
            self._patch("compute_ref_log_probs", _without_noise(reference_method, handle))
        if self.check_reference:
            self._patch("training_step", self._checked_training_step(self.trainer.training_step))

    def uninstall(self) -> None:
        for name, previous in reversed(list(self._patched.items())):
            if previous is None:
                vars(self.trainer).pop(name, None)
            else:
                setattr(self.trainer, name, previous)
        self._patched.clear()
        if self.guard is not None:
            self.guard.remove()
            self.guard = None

    def _patch(self, name: str, wrapper: Any) -> None:
        self._patched[name] = vars(self.trainer).get(name)
        setattr(self.trainer, name, wrapper)

    def _checked_training_step(self, training_step: Any) -> Any:
        @functools.wraps(training_step)
        def checked(*args: Any, **kwargs: Any) -> Any:
            before = self.guard.reference_passes
            result = training_step(*args, **kwargs)
            if self.guard.reference_passes == before:
                raise RuntimeError(
                    f"symnoise: {trl_class_name(self.trainer)} ran a training step without a reference forward that "
                    "symnoise recognises (PEFT adapters disabled or the 'ref' adapter active); its reference "
                    "log-probabilities may have been noised. Pass a separate ref_model or set "
                    "precompute_ref_log_probs=True"
                )
            return result

        return checked

    def token_count(self) -> int | None:
        """TRL's running count of trained tokens (``num_tokens`` in the logs), where the trainer keeps one."""
        count = getattr(self.trainer, "_total_train_tokens", None)
        return count if isinstance(count, int) else None

    def rewind_token_count(self, count: int | None) -> None:
        """Before a later pass of the views: it sees the same batch, so it counts from where the first began."""
        if count is not None:
            self.trainer._total_train_tokens = count


def _without_noise(method: Any, handle: NoiseHandle) -> Any:
    @functools.wraps(method)
    def clean(*args: Any, **kwargs: Any) -> Any:
        with handle.noise_off():
            return method(*args, **kwargs)

    return clean
