"""Turning examples and conversations into token ids with the loss on the assistant's replies only.

For the ``alpaca``, ``vicuna`` and ``plain`` templates every piece of text (each prompt, each reply) is tokenised
on its own and the pieces are concatenated, so each boundary is exact: labels are -100 on every prompt token and
equal the input ids on every trained reply and the EOS appended to it. A multi-turn conversation in Vicuna v1.1
reads as FastChat writes it: ``SYSTEM USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>``, every reply
trained. Special tokens written inside the data (a literal "</s>" in a response, say) stay plain text; only the
tokenizer's own BOS (as it adds it) and the appended EOS are special. With SentencePiece tokenizers such as
LLaMA's, the separately tokenised response starts with a word-boundary marker, which is what FastChat's
"ASSISTANT: {response}" and Alpaca's "### Response:{response}" tokenise to as well.

For ``chat`` the model's own chat template renders the whole conversation (`symnoise.data.chat_template`).

Examples longer than ``max_length`` lose their end; an example with nothing trainable left is dropped. Results
go to a memory-mapped `TokenizedDataset` (`symnoise.data.store`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from .chat_template import encode_chat
from .conversations import Conversation
from .formats import DataError, Example
from .store import IGNORE_INDEX, TokenizedDataset, TokenStats, TokenWriter
from .templates import VICUNA_SYSTEM, alpaca_prompt, user_message, vicuna_prompt

__all__ = [
    "IGNORE_INDEX",
    "TokenStats",
    "TokenizedDataset",
    "special_prefix",
    "tokenize_examples",
    "write_tokens",
]

BATCH_SIZE = 1000
Segment = tuple[str, bool, bool]  # (text, trained, followed by EOS)


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text when adding special tokens (BOS for LLaMA, nothing for GPT-2).

    Suffix tokens some tokenizers add (an EOS) are left out: the prompt is not the end of the sequence.
    """
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    marked = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(marked) - len(plain) + 1):
        if marked[start : start + len(plain)] == plain:
            return list(marked[:start])
    return []


def _single(record: Example | Conversation, template: str) -> Example:
    """The `Example` a single-instruction template (alpaca, plain) renders; more than that is an error."""
    if isinstance(record, Example):
        return record
    if record.system is not None or len(record.exchanges) != 1 or not record.exchanges[0].train:
        what = "a system message" if record.system is not None else f"{len(record.exchanges)} exchanges"
        raise DataError(
            f"{record.source}: template '{template}' renders one instruction and its response, and this "
            f"conversation has {what}; use template: vicuna or chat, or data.turns: first"
        )
    exchange = record.exchanges[0]
    return Example(exchange.user, "", exchange.assistant, record.source)


def segments(record: Example | Conversation, template: str) -> list[Segment]:
    """The pieces of text of a record in a non-chat template, in order, each marked trained or not."""
    if template == "vicuna" and isinstance(record, Conversation):
        system = record.system if record.system is not None else VICUNA_SYSTEM
        pieces: list[Segment] = []
        for position, exchange in enumerate(record.exchanges):
            head = f"{system} " if position == 0 else ""
            pieces.append((f"{head}USER: {exchange.user} ASSISTANT:", False, False))
            pieces.append((exchange.assistant, exchange.train, True))
        return pieces
    if template == "vicuna":
        return [(vicuna_prompt(record), False, False), (record.output, True, True)]
    example = _single(record, template)
    if template == "alpaca":
        return [(alpaca_prompt(example), False, False), (example.output, True, True)]
    if template == "plain":
        return [(user_message(example), False, False), (example.output, True, True)]
    raise ValueError(f"unknown template '{template}'; expected one of alpaca, vicuna, chat, plain")


ENCODING_METHODS = ("__call__", "_encode_plus", "encode", "tokenize", "_switch_to_input_mode")


def rust_backend(tokenizer):
    """The Rust tokenizer to call directly for `tokenizer`'s ids, or None when only ``tokenizer(...)`` is right.

    ``encode_batch_fast`` (no character offsets) tokenises about 1.7x faster than ``tokenizer(...)`` and gives the
    same ids when the tokenizer is transformers' plain Rust-backed class (no subclass changes how text becomes
    tokens) and its backend truncates and pads nothing.
    """
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    if not isinstance(tokenizer, TokenizersBackend):
        return None
    cls = type(tokenizer)
    if any(
        getattr(cls, name, None) is not getattr(TokenizersBackend, name, None) for name in ENCODING_METHODS
    ):
        return None
    backend = tokenizer.backend_tokenizer
    if (
        backend.truncation is not None
        or backend.padding is not None
        or not hasattr(backend, "encode_batch_fast")
    ):
        return None
    return backend


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without added special tokens; special-token strings in the data stay text."""
    if not texts:
        return []
    backend = rust_backend(tokenizer)
    if backend is None:
        encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)
        return [list(ids) for ids in encoded["input_ids"]]
    previous = backend.encode_special_tokens
    backend.encode_special_tokens = True  # what split_special_tokens=True does
    try:
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = previous


def _encoded(
    records: Iterator[Example | Conversation], tokenizer, template: str, prefix: list[int]
) -> Iterator[tuple[int, Iterator[tuple[list[int], list[tuple[int, int]], str]]]]:
    """(records in the batch, their (ids, trained ranges, source)) one batch of `BATCH_SIZE` at a time; one
    tokenizer call per batch for the non-chat templates. (Tokenising in a worker thread while the next batch is
    read was measured: no faster on 2 cores, whose both threads the Rust encoder already uses.)"""
    eos = tokenizer.eos_token_id
    while batch := list(islice(records, BATCH_SIZE)):
        if template == "chat":
            yield len(batch), (_encode_chat_record(record, tokenizer) for record in batch)
            continue
        pieces = [segments(record, template) for record in batch]
        flat = _token_ids(tokenizer, [text for record_pieces in pieces for text, _, _ in record_pieces])
        yield len(batch), _assemble(batch, pieces, flat, prefix, eos)


def _encode_chat_record(
    record: Example | Conversation, tokenizer
) -> tuple[list[int], list[tuple[int, int]], str]:
    conversation = record if isinstance(record, Conversation) else _as_conversation(record)
    ids, spans = encode_chat(conversation, tokenizer)
    return ids, spans, record.source


def _assemble(
    batch: list[Example | Conversation],
    pieces: list[list[Segment]],
    flat: list[list[int]],
    prefix: list[int],
    eos: int,
) -> Iterator[tuple[list[int], list[tuple[int, int]], str]]:
    """Each record's ids (the tokenizer's prefix, then its pieces' ids, EOS after each reply) and trained ranges."""
    position = 0
    for record, record_pieces in zip(batch, pieces, strict=True):
        ids = list(prefix)
        spans = []
        for _, trained, with_eos in record_pieces:
            piece = flat[position]
            position += 1
            start = len(ids)
            ids += piece
            if with_eos:
                ids.append(eos)
            if trained:
                spans.append((start, len(ids)))
        yield ids, spans, record.source


def _as_conversation(example: Example) -> Conversation:
    from .conversations import Exchange

    return Conversation(None, (Exchange(user_message(example), example.output),), example.source)


def check_tokenizer(tokenizer, template: str, max_length: int) -> None:
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if template != "chat" and tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token before tokenising")


def write_tokens(
    records: Iterable[Example | Conversation], tokenizer, template: str, max_length: int, directory: Path
) -> TokenizedDataset:
    """Tokenises `records` into a store at `directory` (created) and opens it; a `DataError` when no example
    is left. Records are consumed one batch at a time, so an iterator over a large file is never held whole."""
    check_tokenizer(tokenizer, template, max_length)
    prefix = [] if template == "chat" else special_prefix(tokenizer)
    writer = TokenWriter(directory, len(tokenizer), max_length)
    records = iter(records)
    seen = 0
    sources: set[str] = set()  # the files (row suffixes cut), named if no example is left
    shortest: int | None = None  # tokens before the first trained one, over all records
    try:
        for size, encoded in _encoded(records, tokenizer, template, prefix):
            seen += size
            for ids, spans, source in encoded:
                sources.add(source.rsplit(":row", 1)[0])
                before = spans[0][0] if spans else len(ids)
                shortest = before if shortest is None else min(shortest, before)
                writer.add(ids, spans, source)
    except BaseException:
        writer.abort()
        raise
    if not seen:
        writer.abort()
        raise DataError("no examples to tokenise")
    if not writer.n_examples:
        writer.abort()
        files = ", ".join(sorted(sources))
        raise DataError(
            f"{files}: every one of the {seen} prompts ({template} template) is at least max_length={max_length} "
            f"tokens long (the shortest is {shortest} tokens), so no response token is left to train on; raise "
            f"data.max_length above {shortest} or shorten the prompts"
        )
    return writer.finish()


def tokenize_examples(
    examples: Iterable[Example | Conversation], tokenizer, template: str, max_length: int = 512
) -> TokenizedDataset:
    """Renders each example or conversation with `template`, tokenises it and masks everything but the trained
    replies out of the labels, into a temporary memory-mapped store (removed when the process ends).

    The chat template writes its own special tokens (BOS included) into the text, so they are parsed there
    and no BOS is added; for alpaca, vicuna and plain the tokenizer's BOS, if it adds one, starts the prompt.
    Raises a `DataError` when no example is left.
    """
    directory = Path(tempfile.mkdtemp(prefix="symnoise-tokens-"))
    dataset = write_tokens(examples, tokenizer, template, max_length, directory / "store")
    _remove_at_exit(directory)
    return dataset


def _remove_at_exit(directory: Path) -> None:
    import atexit
    import shutil

    atexit.register(shutil.rmtree, directory, ignore_errors=True)
