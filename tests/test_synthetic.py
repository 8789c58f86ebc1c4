"""The quickstart world: deterministic, disjoint, every family present, answers right, tokenizer Llama-like."""

from __future__ import annotations

import json
import re
import time

import pytest

from symnoise import synthetic
from symnoise.synthetic import exact_match, family_of, make_task_examples, tiny_llama_config, train_tokenizer


@pytest.fixture(scope="module")
def world():
    train, evaluation = make_task_examples(220, 44, seed=3)
    tokenizer = train_tokenizer(synthetic.tokenizer_corpus(train), vocab_size=1024)
    return train, evaluation, tokenizer


def _key(example):
    return example.instruction, example.input


def test_same_seed_same_examples_and_vocab(world):
    train, evaluation, tokenizer = world
    train2, evaluation2 = make_task_examples(220, 44, seed=3)
    assert (train2, evaluation2) == (train, evaluation)
    again = train_tokenizer(synthetic.tokenizer_corpus(train2), vocab_size=1024)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_other_seed_other_examples(world):
    other_train, _ = make_task_examples(220, 44, seed=4)
    assert other_train != world[0]


def test_sizes_unique_and_disjoint(world):
    train, evaluation, _ = world
    assert (len(train), len(evaluation)) == (220, 44)
    train_keys = {_key(e) for e in train}
    eval_keys = {_key(e) for e in evaluation}
    assert len(train_keys) == len(train) and len(eval_keys) == len(evaluation)
    assert not train_keys & eval_keys


def test_every_family_in_both_sets(world):
    train, evaluation, _ = world
    assert {family_of(e) for e in train} == set(synthetic.DEFAULT_FAMILIES)
    assert {family_of(e) for e in evaluation} == set(synthetic.DEFAULT_FAMILIES)


def test_too_few_examples_for_all_families():
    with pytest.raises(ValueError, match="one per family"):
        make_task_examples(len(synthetic.DEFAULT_FAMILIES) - 1, 20)


def _recompute(family: str, instruction: str, text: str) -> str:
    """Each family's answer computed independently from the example's visible text."""
    if family == "add":
        a, b = map(int, text.split(" and "))
        return str(a + b)
    if family == "subtract":
        a, b = map(int, text.split(" minus "))
        return str(a - b)
    if family == "reverse":
        return "".join(reversed(text))
    if family == "uppercase":
        return text.upper()
    if family == "remove_vowels":
        return re.sub("[aeiou]", "", text)
    if family == "sort_numbers":
        return ", ".join(str(n) for n in sorted(int(x) for x in text.split(", ")))
    if family == "sort_words":
        return ", ".join(sorted(text.split(", ")))
    if family == "capital":
        country = re.search(r"capital of (\w+)\?", instruction).group(1)
        return dict(pair.split(": ") for pair in text.split("; "))[country]
    if family == "nth_item":
        n = int(re.search(r"the (\d+)(st|nd|rd|th) item", instruction).group(1))
        return text.split(", ")[n - 1]
    if family == "key_value_to_json":
        return json.dumps(dict(pair.split("=") for pair in text.split("; ")))
    if family == "date_to_iso":
        day, month, year = text.split("/")
        return f"{year}-{month}-{day}"
    if family == "us_date_to_eu":
        month, day, year = text.split("/")
        return f"{day}/{month}/{year}"
    if family == "increment":
        return str(int(text) + 1)
    raise AssertionError(f"no check for family {family}")


def test_outputs_recomputed_from_inputs(world):
    train, evaluation, _ = world
    for example in train + evaluation:
        assert example.output == _recompute(family_of(example), example.instruction, example.input), example


def test_chosen_families_only_and_every_family_checked():
    train, evaluation = make_task_examples(40, 20, seed=1, families=("increment", "us_date_to_eu"))
    assert sorted(family_of(e) for e in evaluation).count("increment") == 10
    assert {family_of(e) for e in train + evaluation} == {"increment", "us_date_to_eu"}
    everything, _ = make_task_examples(
        10 * len(synthetic.FAMILIES), len(synthetic.FAMILIES), families=tuple(synthetic.FAMILIES)
    )
    for example in everything + train + evaluation:
        assert example.output == _recompute(family_of(example), example.instruction, example.input), example
    with pytest.raises(ValueError, match="unknown task families"):
        make_task_examples(40, 20, families=("increment", "telepathy"))


def test_hand_checked_examples():
    assert _recompute("add", "", "17 and 25") == "42"
    fixed = {
        "subtract": ("", "3 minus 10", "-7"),
        "reverse": ("", "kalo", "olak"),
        "remove_vowels": ("", "banotis", "bnts"),
        "sort_numbers": ("", "9, 3, 10", "3, 9, 10"),
        "capital": ("Using the table, what is the capital of Ravo?", "Ravo: Tesk; Mubi: Lon", "Tesk"),
        "nth_item": ("What is the 2nd item of the list?", "pa, ki, zo", "ki"),
        "key_value_to_json": ("", "a=1; b=zo", '{"a": "1", "b": "zo"}'),
        "date_to_iso": ("", "04/11/1987", "1987-11-04"),
        "us_date_to_eu": ("", "11/04/1987", "04/11/1987"),
        "increment": ("", "1299", "1300"),
    }
    for family, (instruction, text, answer) in fixed.items():
        assert _recompute(family, instruction, text) == answer


def test_outputs_short(world):
    train, evaluation, tokenizer = world
    lengths = [len(tokenizer(e.output, add_special_tokens=False)["input_ids"]) for e in train + evaluation]
    assert max(lengths) <= 40


def test_tokenizer_round_trip_and_special_tokens(world):
    train, evaluation, tokenizer = world
    from symnoise.data import render_prompt

    assert [tokenizer.convert_ids_to_tokens(i) for i in range(4)] == list(synthetic.SPECIAL_TOKENS)
    assert (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    ) == (0, 1, 2, 3)
    for example in train[:50] + evaluation:
        text = render_prompt(example, "alpaca") + example.output
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in ids[1:]
        assert tokenizer.eos_token_id not in ids and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer("Zürich → ok")["input_ids"][0] == 1  # unseen characters still encode, as bytes
    assert tokenizer.decode(tokenizer("Zürich → ok")["input_ids"], skip_special_tokens=True) == "Zürich → ok"
    assert tokenizer.model_max_length == 1024


def test_template_boilerplate_is_compact(world):
    """Each word and punctuation run of the Alpaca and Vicuna boilerplate (and instruction) is one token."""
    from symnoise.data import Example, render_prompt

    train, _, tokenizer = world
    for template in ("alpaca", "vicuna"):
        boilerplate = render_prompt(Example("Reverse the word.", "", "", ""), template)
        pieces = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(boilerplate)
        assert len(tokenizer(boilerplate, add_special_tokens=False)["input_ids"]) == len(pieces)


def test_tiny_llama_config_matches_tokenizer(world):
    import torch
    import transformers

    tokenizer = world[2]
    config = tiny_llama_config(len(tokenizer), hidden_size=64, layers=2, heads=4)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)
    assert config.vocab_size == len(tokenizer) and config.num_hidden_layers == 2
    model = transformers.LlamaForCausalLM(config)
    ids = torch.tensor([tokenizer("Add the two numbers.")["input_ids"]])
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_tiny_llama_for_takes_vocabulary_and_positions_from_the_tokenizer_and_the_rest_from_the_size(world):
    """The quickstart and the grid's pretraining build their model this way: the positions are the tokenizer's
    ``model_max_length``, so the two cannot disagree, and the weights are those of the same explicit call."""
    from types import SimpleNamespace

    import torch

    tokenizer = train_tokenizer(
        synthetic.tokenizer_corpus(world[0][:50]), vocab_size=300, model_max_length=96
    )
    size = SimpleNamespace(hidden_size=32, layers=2, heads=4, seed=5)
    model = synthetic.tiny_llama_for(tokenizer, size)
    config = model.config
    assert (config.vocab_size, config.max_position_embeddings) == (len(tokenizer), 96)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 4)
    same = synthetic.tiny_llama(
        len(tokenizer), 5, hidden_size=32, layers=2, heads=4, max_position_embeddings=96
    )
    other_seed = synthetic.tiny_llama_for(tokenizer, SimpleNamespace(**{**vars(size), "seed": 6}))
    weights = model.state_dict()
    assert all(torch.equal(weights[name], value) for name, value in same.state_dict().items())
    assert not torch.equal(
        weights["model.embed_tokens.weight"], other_seed.state_dict()["model.embed_tokens.weight"]
    )


def test_exact_match():
    assert exact_match(" 42\n", "42")
    assert not exact_match("4 2", "42")
    assert not exact_match("abc", "ABC")


def test_builds_in_seconds():
    start = time.perf_counter()
    train, _ = make_task_examples(2000, 200, seed=0)
    train_tokenizer(synthetic.tokenizer_corpus(train), vocab_size=1024)
    assert time.perf_counter() - start < 10


def _contains(sequence: list[int], part: list[int]) -> bool:
    return any(sequence[k : k + len(part)] == part for k in range(len(sequence) - len(part) + 1))


def test_isolating_tokenizer_gives_a_word_the_same_tokens_everywhere(world):
    train, _, default = world
    tokenizer = train_tokenizer(synthetic.tokenizer_corpus(train), vocab_size=1024, isolate_spaces=True)
    text = 'Reverse: bakotu, mefa bakotu\n12/05/1987 -> 1987-05-12 {"bakotu": "x"}'
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    for token in tokenizer.convert_ids_to_tokens(ids):
        if not token.isalpha():  # spaces, punctuation and digits: one character per token
            assert len(token) == 1 or token == "<s>", token

    def encode(piece, tok=tokenizer):
        return tok(piece, add_special_tokens=False)["input_ids"]

    for context in (" bakotu", ", bakotu", '"bakotu"', "\nbakotu"):
        assert _contains(encode(context), encode("bakotu")), context
    # The default (GPT-2 style) tokenizer folds the space into the word, which is what the option avoids.
    assert not _contains(encode(" bakotu", default), encode("bakotu", default))
