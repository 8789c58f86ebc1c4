"""The quickstart world: a small instruction dataset generated from a seed, with a tokenizer and a tiny Llama.

Every task family is a template whose answer is a short string computed from the input, so a model's output
can be checked exactly and the whole pipeline (train, generate, score) runs on a CPU without any download.
Train and eval sets are disjoint in (instruction, input) and both contain every family.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from symnoise.data import Example, render_prompt

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SOURCE_PREFIX = "synthetic/"

Task = tuple[str, str, str]  # (instruction, input, output)


def _word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    """A pronounceable made-up lowercase word, so no task depends on knowledge of English."""
    count = rng.randint(*syllables)
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(count)) + rng.choice(
        ["", "n", "r", "s", "t"]
    )


def _words(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct made-up words."""
    found: list[str] = []
    while len(found) < count:
        word = _word(rng)
        if word not in found:
            found.append(word)
    return found


def _add(rng: random.Random) -> Task:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    instruction = rng.choice(["Add the two numbers.", "What is the sum of the two numbers?"])
    return instruction, f"{a} and {b}", str(a + b)


def _subtract(rng: random.Random) -> Task:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    instruction = rng.choice(["Subtract the second number from the first.", "Compute the difference."])
    return instruction, f"{a} minus {b}", str(a - b)


def _reverse(rng: random.Random) -> Task:
    word = _word(rng)
    return rng.choice(["Reverse the word.", "Write the word backwards."]), word, word[::-1]


def _uppercase(rng: random.Random) -> Task:
    words = " ".join(_words(rng, rng.randint(1, 3)))
    return (
        rng.choice(["Convert the text to uppercase.", "Write the text in capital letters."]),
        words,
        words.upper(),
    )


def _remove_vowels(rng: random.Random) -> Task:
    word = _word(rng, (3, 4))
    answer = "".join(ch for ch in word if ch not in _VOWELS)
    return rng.choice(["Remove all vowels from the word.", "Delete every vowel in the word."]), word, answer


def _sort_numbers(rng: random.Random) -> Task:
    numbers = [rng.randint(0, 99) for _ in range(rng.randint(3, 6))]
    text = ", ".join(map(str, numbers))
    answer = ", ".join(map(str, sorted(numbers)))
    return (
        rng.choice(["Sort the numbers in ascending order.", "Order the numbers from smallest to largest."]),
        text,
        answer,
    )


def _sort_words(rng: random.Random) -> Task:
    words = _words(rng, rng.randint(3, 5))
    return (
        rng.choice(["Sort the words alphabetically.", "Put the words in alphabetical order."]),
        ", ".join(words),
        ", ".join(sorted(words)),
    )


def _capital(rng: random.Random) -> Task:
    names = _words(rng, 2 * rng.randint(3, 4))
    countries = [name.capitalize() for name in names[::2]]
    capitals = [name.capitalize() for name in names[1::2]]
    table = "; ".join(f"{country}: {capital}" for country, capital in zip(countries, capitals, strict=True))
    pick = rng.randrange(len(countries))
    return f"Using the table, what is the capital of {countries[pick]}?", table, capitals[pick]


def _nth_item(rng: random.Random) -> Task:
    items = _words(rng, rng.randint(3, 6))
    n = rng.randint(1, len(items))
    ordinal = {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")
    return f"What is the {ordinal} item of the list?", ", ".join(items), items[n - 1]


def _key_value_to_json(rng: random.Random) -> Task:
    keys = _words(rng, rng.randint(2, 3))
    pairs = {key: rng.choice([_word(rng, (1, 2)), str(rng.randint(0, 999))]) for key in keys}
    line = "; ".join(f"{key}={value}" for key, value in pairs.items())
    instruction = rng.choice(["Convert the key=value pairs to a JSON object.", "Write the pairs as JSON."])
    return instruction, line, json.dumps(pairs)


def _date_to_iso(rng: random.Random) -> Task:
    year, month, day = rng.randint(1900, 2099), rng.randint(1, 12), rng.randint(1, 28)
    instruction = rng.choice(
        ["Convert the date from DD/MM/YYYY to YYYY-MM-DD.", "Rewrite the date in ISO format."]
    )
    return instruction, f"{day:02d}/{month:02d}/{year}", f"{year}-{month:02d}-{day:02d}"


def _us_date_to_eu(rng: random.Random) -> Task:
    year, month, day = rng.randint(1900, 2099), rng.randint(1, 12), rng.randint(1, 28)
    instruction = rng.choice(
        ["Convert the date from MM/DD/YYYY to DD/MM/YYYY.", "Write the US date the European way."]
    )
    return instruction, f"{month:02d}/{day:02d}/{year}", f"{day:02d}/{month:02d}/{year}"


def _increment(rng: random.Random) -> Task:
    number = rng.randint(100, 99998)
    return rng.choice(["Add one to the number.", "What number comes next?"]), str(number), str(number + 1)


FAMILIES: dict[str, Callable[[random.Random], Task]] = {
    "add": _add,
    "subtract": _subtract,
    "reverse": _reverse,
    "uppercase": _uppercase,
    "remove_vowels": _remove_vowels,
    "sort_numbers": _sort_numbers,
    "sort_words": _sort_words,
    "capital": _capital,
    "nth_item": _nth_item,
    "key_value_to_json": _key_value_to_json,
    "date_to_iso": _date_to_iso,
    "us_date_to_eu": _us_date_to_eu,
    "increment": _increment,
}
# The mixed instruction set of the grid, the examples and the benchmarks (fixed, so their data never changes).
DEFAULT_FAMILIES = (
    "add",
    "subtract",
    "reverse",
    "uppercase",
    "remove_vowels",
    "sort_numbers",
    "sort_words",
    "capital",
    "nth_item",
    "key_value_to_json",
    "date_to_iso",
)


def family_of(example: Example) -> str:
    """The task family an example was generated from (stored in ``source`` as ``synthetic/<family>``)."""
    return example.source.removeprefix(_SOURCE_PREFIX)


def _unique_examples(
    rng: random.Random, family: str, count: int, seen: set[tuple[str, str]]
) -> list[Example]:
    """``count`` examples of one family whose (instruction, input) is not in ``seen`` (which is updated)."""
    found: list[Example] = []
    for _ in range(1000 * count + 1000):
        if len(found) == count:
            return found
        instruction, input_, output = FAMILIES[family](rng)
        if (instruction, input_) not in seen:
            seen.add((instruction, input_))
            found.append(Example(instruction, input_, output, _SOURCE_PREFIX + family))
    raise RuntimeError(f"family {family!r} ran out of distinct instances")


def _split_counts(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible, larger shares first."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def make_task_examples(
    n_train: int, n_eval: int, seed: int = 0, families: Sequence[str] = DEFAULT_FAMILIES
) -> tuple[list[Example], list[Example]]:
    """Train and held-out eval examples, balanced over ``families`` and shuffled, deterministic in ``seed``.

    No (instruction, input) pair occurs twice across both sets, so eval measures generalisation to new
    instances of familiar tasks. Both sizes must be at least the number of families.
    """
    unknown = [name for name in families if name not in FAMILIES]
    if unknown or not families:
        raise ValueError(
            f"unknown task families {unknown or '(none given)'}; choose from {', '.join(FAMILIES)}"
        )
    if min(n_train, n_eval) < len(families):
        raise ValueError(
            f"n_train and n_eval must be >= {len(families)} (one per family); got {n_train}, {n_eval}"
        )
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    train: list[Example] = []
    evaluation: list[Example] = []
    for family, n_tr, n_ev in zip(
        families, _split_counts(n_train, len(families)), _split_counts(n_eval, len(families)), strict=True
    ):
        train += _unique_examples(rng, family, n_tr, seen)
        evaluation += _unique_examples(rng, family, n_ev, seen)
    rng.shuffle(train)
    rng.shuffle(evaluation)
    return train, evaluation


def tokenizer_corpus(
    examples: Iterable[Example], templates: Iterable[str] = ("alpaca", "vicuna")
) -> list[str]:
    """Training texts for :func:`train_tokenizer`: each example rendered with each template, plus its answer.

    Rendering with the templates puts the boilerplate ("### Instruction:" ...) in the corpus, so the
    tokenizer learns it as a few tokens instead of spelling it out byte by byte.
    """
    texts = []
    for example in examples:
        for template in templates:
            texts.append(render_prompt(example, template) + example.output)
    return texts


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, model_max_length: int = 1024, isolate_spaces: bool = False
):
    """A deterministic byte-level BPE tokenizer trained on ``texts``, behaving like a Llama tokenizer.

    Ids 0-3 are ``<pad>``, ``<s>``, ``</s>``, ``<unk>``. Encoding prepends ``<s>`` (through the
    post-processor) and never appends ``</s>``; byte-level pre-tokenisation means any text round-trips.
    With ``isolate_spaces`` every whitespace character, punctuation mark and digit is a token of its own (as
    Llama does for digits), so a word is the same tokens wherever it stands: copying a word from the prompt into
    the answer is then a pure token copy, which a tiny model learns far sooner than GPT-2-style " word" forms.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if isolate_spaces:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"\s|[^\w\s]|\d"), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def tiny_llama_config(
    vocab_size: int,
    hidden_size: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 1024,
    **overrides,
):
    """A small Llama-architecture config whose special token ids match :func:`train_tokenizer`."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        **overrides,
    )


def tiny_llama(vocab_size: int, seed: int, **config_args):
    """A freshly initialised model of :func:`tiny_llama_config` (same ``seed``, same weights), in float32."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size, **config_args))


class TinyLlamaSize(Protocol):
    """What sizes a tiny model: the quickstart's settings and the grid's ``pretrain`` section both have these."""

    hidden_size: int
    layers: int
    heads: int
    seed: int


def tiny_llama_for(tokenizer, size: TinyLlamaSize):
    """A fresh :func:`tiny_llama` for ``tokenizer``: its vocabulary, and as many positions as the tokenizer's
    ``model_max_length``, so the two cannot disagree; width, depth, heads and seed from ``size``."""
    return tiny_llama(
        len(tokenizer),
        size.seed,
        hidden_size=size.hidden_size,
        layers=size.layers,
        heads=size.heads,
        max_position_embeddings=tokenizer.model_max_length,
    )


def exact_match(prediction: str, reference: str) -> bool:
    """True when the two strings are equal after stripping leading and trailing whitespace.

    Nothing else is normalised: case, inner spacing and punctuation all count, because the tasks
    (uppercase, JSON, dates) are defined by them.
    """
    return prediction.strip() == reference.strip()
