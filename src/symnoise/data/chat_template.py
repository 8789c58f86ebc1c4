"""``template: chat``: the model's own chat template, token for token, with an exact assistant-only loss mask.

The token ids are those of ``tokenizer.apply_chat_template(messages, tokenize=True)`` for the whole
conversation: the template renders the text (system prompt, history, end-of-turn tokens, its own BOS if it writes
one) and the text is tokenised without adding special tokens, as `apply_chat_template` does. Nothing is appended:
the end-of-turn token the template writes after each assistant message (``<|im_end|>``, ``<|eot_id|>``,
``<end_of_turn>``, ``</s>``) is what the model learns to stop on.

The trained characters of assistant message k are found by rendering prefixes of the same conversation: the
prompt ``render(messages[:k], add_generation_prompt=True)`` ends where the reply starts, and
``render(messages[:k+1])`` without trailing whitespace ends just after its end-of-turn token. Both must be
prefixes of the whole rendering, which holds for templates that render a conversation turn by turn (ChatML/Qwen,
Llama 3, Gemma, Mistral, Zephyr and most others); a template that rewrites earlier turns is refused with a clear
message instead of a guessed mask. Tokens whose first character falls in a trained range are trained.

TRL's SFTTrainer gets its assistant mask from ``{% generation %}`` markers, which few shipped templates have;
this needs none.
"""

from __future__ import annotations

from bisect import bisect_left

from .conversations import Conversation
from .readers import DataError


def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer, messages: list[dict], source: str, generation_prompt: bool = False) -> str:
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as error:  # jinja raises its own TemplateError, templates raise exceptions of their own
        raise DataError(
            f"{source}: the tokenizer's chat template cannot render this conversation: "
            f"{type(error).__name__}: {error}"
        ) from None
    return text if isinstance(text, str) else text[0]


def assistant_char_spans(conversation: Conversation, tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character range of each trained assistant reply (content and its
    end-of-turn marker, without the whitespace a template writes after it)."""
    if not has_chat_template(tokenizer):
        raise DataError(
            "template 'chat' needs a tokenizer that has a chat template; this one has none "
            "(use template: vicuna or alpaca, or a chat model's tokenizer)"
        )
    messages = conversation.messages()
    full = _render(tokenizer, messages, conversation.source)
    offset = 1 if conversation.system is not None else 0
    spans = []
    for position, exchange in enumerate(conversation.exchanges):
        if not exchange.train:
            continue
        reply = offset + 2 * position + 1
        prompt = _render(tokenizer, messages[:reply], conversation.source, generation_prompt=True)
        upto = _render(tokenizer, messages[: reply + 1], conversation.source).rstrip()
        if not (full.startswith(prompt) and full.startswith(upto) and upto.startswith(prompt)):
            raise DataError(
                f"{conversation.source}: the tokenizer's chat template does not render conversations turn by turn "
                f"(rendering the first {reply} messages with the generation prompt, or the first {reply + 1}, is "
                "not the start of rendering them all), so the assistant replies cannot be located exactly; "
                "use a template that does, or template: vicuna"
            )
        if len(upto) <= len(prompt):
            raise DataError(
                f"{conversation.source}: the chat template renders assistant message {reply} as "
                "nothing; it cannot be trained on"
            )
        spans.append((len(prompt), len(upto)))
    return full, spans


def encode_chat(conversation: Conversation, tokenizer) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the rendered conversation and the [start, end) token range of each trained reply."""
    text, char_spans = assistant_char_spans(conversation, tokenizer)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    starts = [start for start, _ in encoded["offset_mapping"]]
    spans = []
    for begin, end in char_spans:
        first, last = bisect_left(starts, begin), bisect_left(starts, end)
        if last > first:
            spans.append((first, last))
    return ids, spans
