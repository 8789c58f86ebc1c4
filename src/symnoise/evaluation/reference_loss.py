"""The held-out loss of reference answers: how well a model predicts answers it was never trained on.

The grid records it for every cell (``eval/reference_loss.json``, compared prompt by prompt by `symnoise compare`
and the grid's summary) and the quickstart reports it beside exact match. Examples are tokenised exactly as in
training (`tokenize_examples`), so the loss is over the same response tokens the recipe trains on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..data import Example, tokenize_examples
from ..data.packing import right_pad


def reference_loss(
    model, tokenizer, examples: Sequence[Example], template: str, max_length: int, batch_size: int = 8
) -> dict:
    """Mean per-token cross-entropy of the reference outputs (EOS included) given their prompts.

    The same tokenisation as training (`tokenize_examples`: template, BOS, response truncated to ``max_length``),
    so this is the model's held-out loss on answers it was never trained on. ``loss`` is over all reference
    tokens together; ``per_example`` lists, per example kept (in order), its ``instruction``, ``input``, mean token
    ``loss`` and ``tokens``, so two runs can be compared prompt by prompt (`symnoise.evaluation.comparisons`).
    """
    import torch
    import torch.nn.functional as F

    # a row suffix per example, so the tokenised store's sources say which examples were kept
    numbered = [replace(e, source=f"{e.source}:row {i}") for i, e in enumerate(examples)]
    dataset = tokenize_examples(numbered, tokenizer, template, max_length)
    kept = [numbered[int(source.rsplit(":row ", 1)[1])] for source in dataset.sources]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, tokens, per_example = 0.0, 0, []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            ids, mask, labels = right_pad(items, pad_id)
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
            shifted = labels[:, 1:].to(model.device)
            each = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                shifted.reshape(-1),
                ignore_index=-100,
                reduction="none",
            )
            sums = each.reshape(shifted.shape).sum(dim=1).tolist()
            counts = (shifted != -100).sum(dim=1).tolist()
            total += sum(sums)
            tokens += sum(counts)
            for example, loss_sum, count in zip(kept[start : start + len(items)], sums, counts, strict=True):
                per_example.append(
                    {
                        "instruction": example.instruction,
                        "input": example.input,
                        "loss": loss_sum / count,
                        "tokens": int(count),
                    }  # fmt: skip
                )
    return {
        "loss": total / tokens,
        "tokens": tokens,
        "examples": len(dataset),
        "truncated": dataset.n_truncated,
        "dropped": dataset.n_dropped,
        "per_example": per_example,
    }
