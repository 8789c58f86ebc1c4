"""Prompt templates: the text the model sees before its response.

- ``alpaca``: the Stanford Alpaca prompt, with or without an input section (NEFTune / SymNoise for Alpaca,
  Evol-Instruct and Open-Platypus);
- ``vicuna``: FastChat's ``vicuna_v1.1`` conversation (ShareGPT). For one user turn FastChat renders
  system + " " + "USER: " + message + " " + "ASSISTANT:" (separator style ADD_COLON_TWO, sep " ",
  sep2 "</s>"); the generation prompt ends at "ASSISTANT:" and the response follows;
- ``chat``: the tokenizer's own chat template with ``add_generation_prompt=True``, for chat models;
- ``plain``: the instruction (and input) as they are, no template: TRL's "standard" prompt/completion rows.

The response is not part of any prompt; `symnoise.data.tokenize` appends it after the prompt.
"""

from __future__ import annotations

from .formats import Example

TEMPLATES = ("alpaca", "vicuna", "chat", "plain")

ALPACA_HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
ALPACA_HEADER_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def has_input(example: Example) -> bool:
    """Whether the example's input selects the with-input prompt; whitespace only counts as no input."""
    return bool(example.input.strip())


def user_message(example: Example) -> str:
    """The instruction, followed by the input after a blank line when there is one (Vicuna and chat)."""
    return f"{example.instruction}\n\n{example.input}" if has_input(example) else example.instruction


def alpaca_prompt(example: Example) -> str:
    """The Alpaca prompt, ending at '### Response:'."""
    if has_input(example):
        return (
            f"{ALPACA_HEADER_WITH_INPUT}\n\n### Instruction:\n{example.instruction}"
            f"\n\n### Input:\n{example.input}\n\n### Response:"
        )
    return f"{ALPACA_HEADER_NO_INPUT}\n\n### Instruction:\n{example.instruction}\n\n### Response:"


def vicuna_prompt(example: Example) -> str:
    """The Vicuna v1.1 prompt for one user turn, ending at 'ASSISTANT:'."""
    return f"{VICUNA_SYSTEM} USER: {user_message(example)} ASSISTANT:"


def chat_prompt(example: Example, tokenizer) -> str:
    """The tokenizer's chat template applied to one user message, with the assistant header appended."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'chat' needs a tokenizer that has a chat template")
    messages = [{"role": "user", "content": user_message(example)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_prompt(example: Example, template: str, tokenizer=None) -> str:
    """The prompt text of `example` in `template` (alpaca | vicuna | chat | plain); chat needs the tokenizer."""
    if template == "alpaca":
        return alpaca_prompt(example)
    if template == "vicuna":
        return vicuna_prompt(example)
    if template == "chat":
        return chat_prompt(example, tokenizer)
    if template == "plain":
        return user_message(example)
    raise ValueError(f"unknown template '{template}'; expected one of {', '.join(TEMPLATES)}")
