"""Turning examples into token ids with the loss on the response only.

Prompt and response are tokenised separately and concatenated, so the boundary between them is exact:
labels are -100 on every prompt token and equal the input ids on the response and the EOS appended to it.
Special tokens written inside the data (a literal "</s>" in a response, say) stay plain text; only the
tokenizer's own BOS (as it adds it) and the appended EOS are special. With SentencePiece tokenizers such as
LLaMA's, the separately tokenised response starts with a word-boundary marker, which is what FastChat's
"ASSISTANT: {response}" and Alpaca's "### Response:{response}" tokenise to as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .formats import DataError, Example
from .templates import render_prompt

IGNORE_INDEX = -100


@dataclass(frozen=True)
class _Joined:
    """One tokenised example, and whether its response had to be cut to fit."""

    item: dict[str, list[int]] | None
    truncated: bool


class TokenizedDataset(Sequence):
    """Tokenised examples as a map-style dataset (works with `torch.utils.data.DataLoader`).

    Each item is {"input_ids", "labels", "attention_mask"}, lists of ints without padding.
    `n_truncated` examples lost the end of their response to `max_length`; `n_dropped` were removed because the
    prompt alone left no room for a response token; `dropped_sources` says which.
    """

    def __init__(self, items: list[dict[str, list[int]]], max_length: int, n_truncated: int,
                 dropped_sources: tuple[str, ...] = ()):
        self.items = items
        self.max_length = max_length
        self.n_truncated = n_truncated
        self.dropped_sources = dropped_sources

    @property
    def n_dropped(self) -> int:
        return len(self.dropped_sources)

    @property
    def lengths(self) -> list[int]:
        """Number of tokens of each example, for length-grouped batching and token counts."""
        return [len(item["input_ids"]) for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def summary(self) -> str:
        """'5000 examples, 37 truncated to 512 tokens' (plus the dropped ones, if any)."""
        line = f"{len(self)} examples, {self.n_truncated} truncated to {self.max_length} tokens"
        if self.n_dropped:
            line += f", {self.n_dropped} dropped (prompt alone reaches {self.max_length} tokens)"
        return line


def join_prompt_response(prompt_ids: list[int], response_ids: list[int], eos_id: int, max_length: int) -> _Joined:
    """Concatenates prompt and response + EOS, truncating the response end to `max_length`.

    EOS is kept only when it fits. A prompt that leaves no room for any response token gives no item.
    """
    room = max_length - len(prompt_ids)
    if room <= 0:
        return _Joined(None, truncated=False)
    target = [*response_ids, eos_id]
    kept = target[:room]
    input_ids = [*prompt_ids, *kept]
    item = {
        "input_ids": input_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + kept,
        "attention_mask": [1] * len(input_ids),
    }
    return _Joined(item, truncated=len(kept) < len(target))


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text when adding special tokens (BOS for LLaMA, nothing for GPT-2).

    Suffix tokens some tokenizers add (an EOS) are left out: the prompt is not the end of the sequence.
    """
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    marked = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(marked) - len(plain) + 1):
        if marked[start:start + len(plain)] == plain:
            return list(marked[:start])
    return []


def _token_ids(tokenizer, texts: list[str], parse_special: bool) -> list[list[int]]:
    """Token ids of each text, without added special tokens; special-token strings stay text unless asked."""
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=not parse_special)
    return [list(ids) for ids in encoded["input_ids"]]


def tokenize_examples(examples: Sequence[Example], tokenizer, template: str,
                      max_length: int = 512) -> TokenizedDataset:
    """Renders each example with `template`, tokenises it and masks the prompt out of the labels.

    The chat template writes its own special tokens (BOS included) into the text, so they are parsed there
    and no BOS is added; for alpaca and vicuna the tokenizer's BOS, if it adds one, starts the prompt.
    Raises a `DataError` when no example is left.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token before tokenising")
    if not examples:
        raise DataError("no examples to tokenise")
    is_chat = template == "chat"
    prefix = [] if is_chat else special_prefix(tokenizer)
    prompts = [render_prompt(example, template, tokenizer) for example in examples]
    prompt_ids = _token_ids(tokenizer, prompts, parse_special=is_chat)
    response_ids = _token_ids(tokenizer, [example.output for example in examples], parse_special=False)
    items, dropped, n_truncated = [], [], 0
    for example, prompt, response in zip(examples, prompt_ids, response_ids, strict=True):
        joined = join_prompt_response(prefix + prompt, response, tokenizer.eos_token_id, max_length)
        if joined.item is None:
            dropped.append(example.source)
            continue
        items.append(joined.item)
        n_truncated += joined.truncated
    if not items:
        sources = sorted({example.source.rsplit(":row", 1)[0] for example in examples})
        shortest = min(len(prefix) + len(ids) for ids in prompt_ids)
        raise DataError(
            f"{', '.join(sources)}: every one of the {len(examples)} prompts ({template} template) is at least "
            f"max_length={max_length} tokens long (the shortest is {shortest} tokens), so no response token is "
            f"left to train on; raise data.max_length above {shortest} or shorten the prompts")
    return TokenizedDataset(items, max_length, n_truncated, tuple(dropped))
