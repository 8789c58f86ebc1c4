"""Prompt templates against golden strings written out by hand from the papers' / FastChat's definitions."""

from __future__ import annotations

import copy

import pytest

from symnoise.data import DataError, Example, default_template, render_prompt

WITH_INPUT = Example("Arrange the following musical notes", "G, B, E", "E, G, B", "golden:row 0")
NO_INPUT = Example("Give three tips for staying healthy.", "", "Eat well.", "golden:row 1")

GOLDEN_ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\nArrange the following musical notes"
    "\n\n### Input:\nG, B, E\n\n### Response:"
)
GOLDEN_ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:"
)
GOLDEN_VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: Give three tips for staying healthy. ASSISTANT:"
)
GOLDEN_VICUNA_WITH_INPUT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: Arrange the following musical notes\n\n"
    "G, B, E ASSISTANT:"
)

TOY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def test_alpaca_with_input_is_exact():
    assert render_prompt(WITH_INPUT, "alpaca") == GOLDEN_ALPACA_WITH_INPUT


def test_alpaca_without_input_is_exact():
    assert render_prompt(NO_INPUT, "alpaca") == GOLDEN_ALPACA_NO_INPUT


def test_whitespace_only_input_counts_as_no_input():
    blank = Example(NO_INPUT.instruction, "  \n", NO_INPUT.output, NO_INPUT.source)
    assert render_prompt(blank, "alpaca") == GOLDEN_ALPACA_NO_INPUT


def test_vicuna_v11_is_exact():
    assert render_prompt(NO_INPUT, "vicuna") == GOLDEN_VICUNA


def test_vicuna_puts_the_input_after_the_instruction():
    assert render_prompt(WITH_INPUT, "vicuna") == GOLDEN_VICUNA_WITH_INPUT


def test_braces_in_the_data_are_plain_text():
    braces = Example("Fill {input} and {0}", "{instruction}", "ok", "golden:row 2")
    prompt = render_prompt(braces, "alpaca")
    assert "### Instruction:\nFill {input} and {0}\n\n### Input:\n{instruction}\n\n" in prompt


def test_chat_uses_the_tokenizer_template_with_generation_prompt(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = TOY_CHAT_TEMPLATE
    assert (
        render_prompt(NO_INPUT, "chat", tokenizer)
        == "<s>[user] Give three tips for staying healthy.\n[assistant] "
    )
    assert render_prompt(WITH_INPUT, "chat", tokenizer) == (
        "<s>[user] Arrange the following musical notes\n\nG, B, E\n[assistant] "
    )


def test_chat_without_a_chat_template_is_a_clear_error(tiny_tokenizer):
    assert tiny_tokenizer.chat_template is None
    with pytest.raises(ValueError, match="chat template"):
        render_prompt(NO_INPUT, "chat", tiny_tokenizer)
    with pytest.raises(ValueError, match="chat template"):
        render_prompt(NO_INPUT, "chat")


def test_unknown_template_names_the_choices():
    with pytest.raises(ValueError, match="alpaca, vicuna, chat"):
        render_prompt(NO_INPUT, "llama-2")


def test_default_template_follows_the_papers():
    assert default_template("sharegpt") == "vicuna"
    for fmt in ["alpaca", "evol-instruct", "openplatypus", "dolly"]:
        assert default_template(fmt) == "alpaca"
    assert default_template("messages") == "vicuna"
    assert default_template("prompt-completion") == "plain"
    assert default_template("prompt-completion", conversational=True) == "vicuna"
    with pytest.raises(DataError, match="unknown data format"):
        default_template("oasst")
