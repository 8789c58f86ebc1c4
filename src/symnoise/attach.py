"""A removable attachment that applies a `NoiseConfig` to any Hugging Face causal LM.

``attach(model, config)`` registers three hooks on the innermost ``PreTrainedModel`` (found through DDP,
FSDP, DeepSpeed, ``torch.compile`` and PEFT wrappers):

* a forward pre-hook on the model that records the attention mask, position ids and labels of the call and,
  for several views per example (the symmetric pair, ``draws > 1``) in ``concat`` execution, repeats the batch
  once per view (ids or embeddings, mask, labels, position ids, packed-sequence metadata and
  ``num_items_in_batch``);
* a forward hook on the input embedding module that adds the noise to its output (what the first layer sees;
  for Gemma that is after the ``sqrt(d)`` scale, as in transformers);
* a forward hook on the model that forgets the call and, after a repeated forward, gives the per-token outputs
  the caller's batch shape again (`fold_pair_outputs`: the loss covers every view, logits and boolean outputs
  are the first view's, per-token log-probabilities the mean over the views), so code that pairs the outputs
  with its own labels (TRL's fused loss and token accuracy) stays correct.

Noise is added only when the model is in training mode, outside ``noise_off()``, and while the current alpha
is above zero; ``generate()`` never sees it. Nothing is stored in the model's state dict.

This module owns the hooks' lifecycle and the noise update; the views' batch handling (the symmetric pair,
several draws) is in `symnoise.pair` and the seeded, resumable noise stream in `symnoise.noise_stream`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import noise as N
from .config import NoiseConfig
from .noise_stream import NoiseStream
from .pair import (
    FIRST_VIEW,
    IGNORE_INDEX,
    ExampleViews,
    View,
    fold_pair_outputs,
    packed_without_mask,
    views_of,
)

_ATTRIBUTE = "_symnoise_handle"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that owns the input embeddings, through DDP/FSDP/DeepSpeed (``.module``), ``torch.compile``
    (``._orig_mod``) and PEFT (``get_base_model()``) wrappers."""
    current = model
    for _ in range(16):
        if hasattr(current, "get_base_model") and callable(current.get_base_model):
            inner = current.get_base_model()
        elif isinstance(getattr(current, "_orig_mod", None), nn.Module):
            inner = current._orig_mod
        elif isinstance(getattr(current, "module", None), nn.Module):
            inner = current.module
        else:
            return current
        if inner is current:
            return current
        current = inner
    return current


def _distributed_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


@dataclass
class _Call:
    """What the pre-hook learned about one forward call, for the embedding hook to use."""

    active: bool
    input_shape: torch.Size | None = None  # (B, T) before any repetition
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    repeated_along: int | None = None  # concat views: 0 batch, 1 sequence (packed rows); None: one view
    logits_length: int | None = (
        None  # positions per half of logits kept at given positions along the sequence
    )
    view: View = FIRST_VIEW  # paired execution: the view this pass runs
    applied: bool = False


class NoiseHandle:
    """The attachment returned by `attach`. Use ``remove()`` or a ``with`` block to detach."""

    def __init__(self, model: nn.Module, config: NoiseConfig):
        if not isinstance(config, NoiseConfig):
            raise TypeError(f"config must be a symnoise.NoiseConfig; got {type(config).__name__}")
        self.config = config
        self.model = unwrap_model(model)
        self.embeddings = self._find_embeddings(self.model)
        if getattr(self.model, _ATTRIBUTE, None) is not None:
            raise RuntimeError(
                "symnoise is already attached to this model; call .remove() on the first handle "
                "before attaching again (two attachments would add the noise twice)"
            )
        if getattr(self.embeddings, "neftune_noise_alpha", None) is not None:
            raise RuntimeError(
                "transformers' NEFTune hook is active on this model (neftune_noise_alpha is set); "
                "unset neftune_noise_alpha so that the noise is not added twice"
            )
        self.rank = _distributed_rank()
        self._stream = NoiseStream(config.seed, self.rank, config.distribution)
        self.alpha = config.alpha
        self.progress = 0.0
        self._norm_inputs: tuple | None = None
        self._norm_value: torch.Tensor | None = None
        self._calls: list[_Call] = []
        self._off_depth = 0
        self._views = ExampleViews(
            views_of(config.draws, config.symmetric) if config.views > 1 else (FIRST_VIEW,)
        )
        self._forward_params = list(inspect.signature(self.model.forward).parameters)
        self._hooks = [
            self.model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            self.model.register_forward_hook(self._after_forward, with_kwargs=True, always_call=True),
            self.embeddings.register_forward_hook(self._on_embeddings),
        ]
        self._wrap_generate()
        setattr(self.model, _ATTRIBUTE, self)

    # ----------------------------------------------------------------- lifecycle
    @staticmethod
    def _find_embeddings(model: nn.Module) -> nn.Module:
        getter = getattr(model, "get_input_embeddings", None)
        embeddings = getter() if callable(getter) else None
        if not isinstance(embeddings, nn.Module):
            raise TypeError(
                f"{type(model).__name__} has no input embeddings (get_input_embeddings() is missing or returned "
                f"{embeddings!r}); symnoise needs a model whose token embeddings it can perturb, e.g. a "
                "transformers *ForCausalLM model, a PEFT model around one, or one wrapped by accelerate"
            )
        return embeddings

    def _wrap_generate(self) -> None:
        original = getattr(self.model, "generate", None)
        self._generate_wrapped = callable(original) and "generate" not in vars(self.model)
        if self._generate_wrapped:

            @functools.wraps(original)
            def generate_without_noise(*args: Any, **kwargs: Any) -> Any:
                with self.noise_off():
                    return original(*args, **kwargs)

            self.model.generate = generate_without_noise

    def remove(self) -> None:
        """Detach: remove every hook and restore the model exactly as it was. Safe to call twice."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._generate_wrapped and "generate" in vars(self.model):
            del self.model.generate
            self._generate_wrapped = False
        if getattr(self.model, _ATTRIBUTE, None) is self:
            delattr(self.model, _ATTRIBUTE)
        self._calls.clear()
        self._views.reset()

    @property
    def attached(self) -> bool:
        return bool(self._hooks)

    def __enter__(self) -> NoiseHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # ----------------------------------------------------------------- controls
    @contextlib.contextmanager
    def noise_off(self) -> Iterator[None]:
        """Forwards inside this block see clean embeddings, even in training mode (reference passes, probes)."""
        self._off_depth += 1
        try:
            yield
        finally:
            self._off_depth -= 1

    def set_progress(self, progress: float) -> float:
        """Tell the schedule how far training is (0 at the start, 1 at the end); returns the alpha now in use."""
        self.progress = float(progress)
        self.alpha = N.scheduled_alpha(
            self.config.alpha, self.config.alpha_floor, self.config.schedule, self.progress
        )
        return self.alpha

    def paired_passes(self) -> Iterator[float]:
        """For ``execution='paired'``: run one forward and backward per step of the loop, weighting the loss
        by the yielded value. There is one pass per view (``config.views``): for each draw ``+eps``, then ``-eps``
        with the same ``eps`` for the symmetric pair; each weighs ``1/views``, so the backward passes accumulate
        exactly the gradient of the ``concat`` forward, and the weighted losses add up to the views' mean loss::

            for weight in handle.paired_passes():
                loss = model(**batch).loss * weight
                loss.backward()

        When no noise is due (alpha 0, eval mode, ``noise_off``) it yields 1.0 once, for one ordinary pass.
        """
        if not (self.config.views > 1 and self.config.execution == "paired"):
            raise RuntimeError(
                "paired_passes() is for execution='paired' with several views per example: "
                "NoiseConfig(symmetric=True) or draws > 1"
            )
        if not self._noise_wanted():
            yield 1.0
            return
        yield from self._views.passes()

    @property
    def pair_copy_positions(self) -> int:
        """Token positions the views after the first (the pair's ``X - eps``, further draws) added to what callers
        passed, as copies or passes: the extra work the hardware MFU counts. A Python int: reading it costs no
        device sync."""
        return self._views.copy_positions

    @property
    def seed(self) -> int:
        """This rank's noise stream seed (see `symnoise.noise_stream`)."""
        return self._stream.seed

    @property
    def draws(self) -> int:
        """How many noise draws this stream has made."""
        return self._stream.draws

    @property
    def generator(self) -> torch.Generator:
        """The generator the next draw uses, on the device of the last draw (the embeddings' device before the
        first): already seeded for that draw. Each draw re-seeds it, so setting its state has no lasting effect."""
        weight = getattr(self.embeddings, "weight", None)
        first = (
            weight.device
            if isinstance(weight, torch.Tensor) and weight.device.type != "meta"
            else torch.device("cpu")
        )
        return self._stream.next_generator(first)

    def state_dict(self) -> dict[str, Any]:
        """Noise stream state and schedule position, to save with a checkpoint (one file per rank).

        Device-independent: ``generator`` is the int64 pair (seed, draws so far), which continues the stream on
        whatever device the resumed run draws on."""
        return {
            **self._stream.state_dict(),
            "rank": self.rank,
            "progress": self.progress,
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the noise sequence of a saved run (the same rank's file), on any device."""
        self._stream.load_state_dict(state)
        self.set_progress(state["progress"])

    # ----------------------------------------------------------------- hooks
    def _noise_wanted(self) -> bool:
        return self.model.training and self._off_depth == 0 and self.alpha > 0 and self.config.is_active

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        call = _Call(active=self._noise_wanted())
        self._calls.append(call)
        if not call.active:
            if self.model.training and packed_without_mask(kwargs) and self._cache_may_be_on(kwargs):
                return args, {**kwargs, "use_cache": False}
            return None
        if args:  # bind positional inputs to names so they can be read and repeated
            kwargs = {**dict(zip(self._forward_params, args, strict=False)), **kwargs}
            args = ()
        ids = kwargs.get("input_ids")
        embeds = kwargs.get("inputs_embeds")
        source = ids if ids is not None else embeds
        if source is None:
            raise ValueError("symnoise: a training forward needs input_ids or inputs_embeds")
        call.input_shape = source.shape[:2]
        call.attention_mask = kwargs.get("attention_mask")
        call.position_ids = kwargs.get("position_ids")
        if call.position_ids is None and kwargs.get("cu_seq_lens_q") is not None:
            call.position_ids = N.position_ids_from_cu_seqlens(
                kwargs["cu_seq_lens_q"], source.shape[0] * source.shape[1]
            )
        call.labels = kwargs.get("labels")
        if self.config.region != "all" and call.labels is None:
            raise ValueError(
                f"symnoise: NoiseConfig.region={self.config.region!r} needs labels in the forward "
                "call to tell prompt tokens (-100) from response tokens"
            )
        if packed_without_mask(kwargs) and self._cache_may_be_on(kwargs):
            kwargs["use_cache"] = False
        if self.config.views > 1:
            self._prepare_views(call, kwargs)
        if embeds is not None:
            kwargs["inputs_embeds"] = self._add_noise(kwargs["inputs_embeds"], call)
            call.applied = True
        return args, kwargs

    def _prepare_views(self, call: _Call, kwargs: dict) -> None:
        if self.config.execution == "paired":
            call.view = self._views.current_view(call.input_shape.numel())
            return
        implementation = str(getattr(getattr(self.model, "config", None), "_attn_implementation", "") or "")
        call.repeated_along, call.logits_length = self._views.repeat(
            kwargs, call.input_shape, call.labels, implementation
        )

    def _cache_may_be_on(self, kwargs: dict) -> bool:
        return "use_cache" in self._forward_params and kwargs.get("use_cache") is not False

    def _on_embeddings(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        call = self._calls[-1] if self._calls else None
        if call is None or not call.active or call.applied:
            return None
        call.applied = True
        return self._add_noise(output, call)

    def _after_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        call = self._calls.pop() if self._calls else None
        if call is None or not call.active or output is None:
            return None
        if call.repeated_along is not None:
            return fold_pair_outputs(
                output, call.repeated_along, call.input_shape, call.logits_length, self.config.views
            )
        return None

    # ----------------------------------------------------------------- noise
    def _add_noise(self, embeds: torch.Tensor, call: _Call) -> torch.Tensor:
        batch, seq = call.input_shape
        along = call.repeated_along
        views = self._views.views if along is not None else (call.view,)
        expected = (len(views) * batch, seq) if along == 0 else (batch, len(views) * seq)
        if embeds.dim() == 2 and embeds.shape[0] == expected[0] * expected[1]:
            return self._add_noise(embeds.view(*expected, -1), call).view_as(embeds)
        if tuple(embeds.shape[:2]) != expected:
            raise ValueError(
                f"symnoise: the input embeddings have shape {tuple(embeds.shape)} but the forward's inputs have "
                f"batch x length {tuple(expected)}; cannot tell which embedding belongs to which token"
            )
        if along is None:
            eps, scale = self._noise_draws(embeds, call, 1)
            return embeds.addcmul(eps[0], scale, value=call.view.sign)
        # One fused multiply-add per view: X + s eps_0 (and X - s eps_0 for the pair), X + s eps_1, ...
        size = expected[along] // len(views)
        eps, scale = self._noise_draws(embeds.narrow(along, 0, size), call, self.config.draws)
        parts = [
            embeds.narrow(along, i * size, size).addcmul(eps[view.draw], scale, value=view.sign)
            for i, view in enumerate(views)
        ]
        return torch.cat(parts, dim=along)

    def _noise_draws(
        self, embeds: torch.Tensor, call: _Call, count: int
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``count`` draws of unit noise ``eps`` (each of the shape of ``embeds``, the stream advancing once per
        draw) and the per-token scale ``(B, T, 1)``: view ``(k, sign)`` adds ``sign * eps[k] * scale``. The -eps
        pass of a pair reuses its +eps pass's draw."""
        if call.view.sign == -1:
            eps, scale = self._views.reuse_draw(embeds.shape)
            return [eps], scale
        lengths = self._token_lengths(embeds.shape[:2], call, embeds.device)
        cfg = self.config
        factor = N.distribution_factor(cfg.distribution, cfg.match_uniform_norm)
        scale = N.noise_scale(lengths, embeds.shape[-1], self.alpha, factor).to(embeds.dtype)
        eps = [
            self._stream.sample_unit_noise(embeds.shape, embeds.dtype, embeds.device) for _ in range(count)
        ]
        positions = call.position_ids if cfg.length_mode == "tokens" else None
        # What the logged norm needs, (B, T) numbers: keeping eps itself would hold an embedding-sized tensor
        # through the backward pass of every step (256 MiB for 8 x 2048 tokens of a 7B model in float32).
        # ||eps_t * scale_t||^2 = ||eps_t||^2 * scale_t^2: one pass over eps, no product the size of the embeddings.
        token_sq = N.token_squared_norms(eps[-1]) * scale.squeeze(-1).float().square()
        self._norm_inputs = (token_sq, lengths, positions)
        self._norm_value = None
        if cfg.symmetric and cfg.execution == "paired":
            self._views.draw = (eps[-1], scale)
        return eps, scale

    @property
    def last_noise_norm(self) -> torch.Tensor | None:
        """Mean per-sequence L2 norm of the last noise drawn (0-d tensor; of the last draw when there are
        several), finished when first read: the per-sequence sums wait for the steps that log them."""
        if self._norm_value is None and self._norm_inputs is not None:
            token_sq, lengths, positions = self._norm_inputs
            self._norm_value = N.mean_norm_from_token_squares(token_sq, lengths, positions)
            self._norm_inputs = None
        return self._norm_value

    def _token_lengths(self, shape: torch.Size, call: _Call, device: torch.device) -> torch.Tensor:
        if self.config.length_mode == "padded":
            return torch.full(tuple(shape), float(shape[1]), device=device)
        mask = call.attention_mask
        real = (
            mask.to(device=device, dtype=torch.bool)
            if mask is not None and mask.dim() == 2
            else torch.ones(tuple(shape), dtype=torch.bool, device=device)
        )
        if self.config.region != "all":
            response = call.labels.to(device) != IGNORE_INDEX
            real = real & (response if self.config.region == "response" else ~response)
        positions = call.position_ids.to(device) if call.position_ids is not None else None
        return N.token_lengths(real, positions)


def attach(model: nn.Module, config: NoiseConfig) -> NoiseHandle:
    """Attach noisy embeddings to ``model`` (any transformers causal LM, PEFT model or accelerate-wrapped
    model). Returns a handle; ``handle.remove()`` or leaving a ``with attach(...)`` block detaches it."""
    return NoiseHandle(model, config)


def get_handle(model: nn.Module) -> NoiseHandle | None:
    """The handle attached to ``model`` (through any wrapper), or None."""
    return getattr(unwrap_model(model), _ATTRIBUTE, None)


@contextlib.contextmanager
def noise_off(model: nn.Module) -> Iterator[None]:
    """Clean embeddings for forwards inside the block, whether or not noise is attached to ``model``."""
    handle = get_handle(model)
    if handle is None:
        yield
    else:
        with handle.noise_off():
            yield
