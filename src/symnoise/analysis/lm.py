"""A causal LM's training loss on a fixed set of examples, as a function of noise on its input embeddings.

`EmbeddingLoss` turns a model and tokenised examples into the callables of `symnoise.analysis.estimators`:
the loss and the flat gradient (of the trainable parameters: all of them, or a LoRA run's adapters) at
``embeddings + sign * noise``, and ``v'Hv`` for the Hessian with respect to the input embeddings. The loss is the
recipe's: the mean cross-entropy over every trained (response) token of all the examples, which are processed in
micro-batches whose contributions add up, so memory depends on the micro-batch, never on the number of examples.

The noise is the run's, built with `symnoise.noise`: ``alpha * c / sqrt(L d) * u`` on the tokens the run noised
(real tokens, or the prompt or response region; ``L`` counted per sequence as in training). A draw is an integer
seed: the noise of each micro-batch is regenerated from it, so a pair ``(e, -e)`` uses the same ``e`` and nothing
noise-sized is kept between passes. The model runs in eval mode (no dropout) and with the noise as the only
randomness.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .. import noise as N
from ..config import NoiseConfig
from ..data import IGNORE_INDEX
from .estimators import rademacher_like


@dataclass(frozen=True)
class Direction:
    """One noise draw: its seed and the distribution and scale it is drawn at."""

    seed: int
    distribution: str
    alpha: float
    factor: float


@dataclass
class MicroBatch:
    """Right-padded examples, and for each token the length ``L`` of its sequence's noised part (0: no noise)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    noise_lengths: torch.Tensor


def noise_lengths(mask: torch.Tensor, labels: torch.Tensor, config: NoiseConfig) -> torch.Tensor:
    """Per token, the ``L`` of the run's formula: real tokens (or one region of them) per sequence, or the padded
    length with ``length_mode: padded`` (which noises padding too, as transformers' formula does)."""
    if config.length_mode == "padded":
        return torch.full(mask.shape, float(mask.shape[1]), device=mask.device)
    noised = mask.bool()
    if config.region != "all":
        response = labels != IGNORE_INDEX
        noised = noised & (response if config.region == "response" else ~response)
    return N.token_lengths(noised)


def make_batches(
    items: list[dict], batch_size: int, pad_id: int, config: NoiseConfig, device: str | torch.device
) -> list[MicroBatch]:
    """Micro-batches of ``batch_size`` examples (dicts of ``input_ids``, ``labels``), right-padded."""
    batches = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        width = max(len(item["input_ids"]) for item in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, item in enumerate(chunk):
            n = len(item["input_ids"])
            ids[row, :n] = torch.tensor(item["input_ids"])
            labels[row, :n] = torch.tensor(item["labels"])
            mask[row, :n] = 1
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        batches.append(MicroBatch(ids, mask, labels, noise_lengths(mask, labels, config)))
    return batches


def trained_tokens(batches: list[MicroBatch]) -> int:
    """Tokens the loss is averaged over: labels other than -100 after the one-token shift."""
    return sum(int((batch.labels[:, 1:] != IGNORE_INDEX).sum()) for batch in batches)


@contextmanager
def double_backward_attention():
    """Attention kernels that can be differentiated twice (fused SDPA kernels cannot); a no-op elsewhere."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch: its default already falls back
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


class EmbeddingLoss:
    """The run's loss on fixed examples as a function of the noise on the input embeddings (see the module)."""

    def __init__(self, model, batches: list[MicroBatch], gradient_device: str | torch.device | None = None):
        self.model = model.eval()
        self.batches = batches
        self.tokens = trained_tokens(batches)
        if self.tokens == 0:
            raise ValueError("no trained (response) tokens in the examples")
        self.embeddings = model.get_input_embeddings()
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.device = self.embeddings.weight.device
        # Where flat gradients go: the gradient study keeps about ten of them (see estimators.gradient_study).
        self.gradient_device = torch.device(gradient_device) if gradient_device is not None else self.device

    # ------------------------------------------------------------------------------------------ pieces
    def _noise(self, direction: Direction) -> list[torch.Tensor]:
        """The draw's noise for each micro-batch, regenerated from its seed (same seed, same noise)."""
        generator = torch.Generator(device=self.device).manual_seed(direction.seed)
        dim = self.embeddings.weight.shape[-1]
        out = []
        for batch in self.batches:
            shape = (*batch.input_ids.shape, dim)
            unit = N.sample_unit_noise(
                shape, direction.distribution, generator=generator, dtype=torch.float32, device=self.device
            )
            scale = N.noise_scale(batch.noise_lengths, dim, direction.alpha, direction.factor)
            out.append(unit * scale)
        return out

    def _token_losses(self, batch: MicroBatch, embeds: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy per example (over its trained tokens), in float32 (or float64 for such a model)."""
        logits = self.model(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
        targets = batch.labels[:, 1:]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        return losses.sum(dim=1)

    def _inputs(self, batch: MicroBatch, noise: torch.Tensor | None, sign: float) -> torch.Tensor:
        embeds = self.embeddings(batch.input_ids)
        if noise is None:
            return embeds
        return embeds + (sign * noise).to(embeds.dtype)

    # ------------------------------------------------------------------------------------------ callables
    def per_example(self) -> tuple[list[float], list[int]]:
        """Noise-off summed loss and trained-token count of every example (for the loss and its interval)."""
        sums, counts = [], []
        with torch.no_grad():
            for batch in self.batches:
                sums += self._token_losses(batch, self._inputs(batch, None, 1.0)).double().tolist()
                counts += (batch.labels[:, 1:] != IGNORE_INDEX).sum(dim=1).tolist()
        return sums, counts

    def loss_at(self, direction: Direction | None, sign: float) -> float:
        """The mean loss at ``embeddings + sign * noise`` (``direction`` None: noise off)."""
        noises = self._noise(direction) if direction is not None else [None] * len(self.batches)
        total = 0.0
        with torch.no_grad():
            for batch, noise in zip(self.batches, noises, strict=True):
                total += float(self._token_losses(batch, self._inputs(batch, noise, sign)).double().sum())
        return total / self.tokens

    def gradient_at(self, direction: Direction | None, sign: float) -> torch.Tensor:
        """The flat float32 gradient of the mean loss w.r.t. the trainable parameters at the noised embeddings,
        accumulated over the micro-batches (one forward and backward over all examples), on ``gradient_device``."""
        noises = self._noise(direction) if direction is not None else [None] * len(self.batches)
        self.model.zero_grad(set_to_none=True)
        for batch, noise in zip(self.batches, noises, strict=True):
            loss = self._token_losses(batch, self._inputs(batch, noise, sign)).sum() / self.tokens
            loss.backward()
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p))
                .reshape(-1)
                .to(self.gradient_device, torch.float32)
                for p in self.parameters
            ]
        )
        self.model.zero_grad(set_to_none=True)
        return flat

    def hessian_form(self, seed: int) -> float:
        """``v'Hv`` for one Rademacher probe ``v`` on the real tokens' embeddings, H the Hessian of the mean loss
        w.r.t. the input embeddings (noise off): a sum over micro-batches, whose examples do not interact."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        weights = self.embeddings.weight.dtype
        total = 0.0
        with double_backward_attention():
            for batch in self.batches:
                with torch.no_grad():
                    embeds = self.embeddings(batch.input_ids).to(torch.promote_types(weights, torch.float32))
                point = embeds.requires_grad_(True)
                probe = rademacher_like(point, generator, batch.attention_mask.bool())
                loss = self._token_losses(batch, point.to(weights)).sum() / self.tokens
                (gradient,) = torch.autograd.grad(loss, point, create_graph=True)
                (hv,) = torch.autograd.grad((gradient * probe).sum(), point)
                total += float((hv * probe).double().sum())
        return total
