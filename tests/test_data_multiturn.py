"""Multi-turn tokenisation: every assistant turn trained, masks checked token by token, chat templates of the main
families equal to `apply_chat_template`, the noise region on the same masks, the data report's counts, mixtures
and the tokenised-data cache."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symnoise.data import IGNORE_INDEX, DataError, Example, load_records, tokenize_examples
from symnoise.data.conversations import Conversation, Exchange
from symnoise.data.mixture import MixedDataset, prepare_training_data, weighted_selection
from symnoise.data.prepare import DatasetSpec, prepare_dataset
from symnoise.data.templates import VICUNA_SYSTEM

SHAREGPT = "sharegpt_vicuna/dummy_conversation.json"
CONVERSATION = Conversation(
    "Be brief.", (Exchange("Add 12 and 30.", "42"), Exchange("Sort 3 1 2.", "1 2 3")), "t:row 0"
)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def trained_runs(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of trained labels."""
    runs, start = [], None
    for position, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = position
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, position))
            start = None
    return runs


# ----------------------------------------------------------------------------------- vicuna, multi-turn


def test_vicuna_multi_turn_trains_every_reply_token_by_token(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    item = tokenize_examples([CONVERSATION], tiny_tokenizer, "vicuna", max_length=512)[0]
    pieces = [
        (ids(tiny_tokenizer, "Be brief. USER: Add 12 and 30. ASSISTANT:"), False),
        ([*ids(tiny_tokenizer, "42"), eos], True),
        (ids(tiny_tokenizer, "USER: Sort 3 1 2. ASSISTANT:"), False),
        ([*ids(tiny_tokenizer, "1 2 3"), eos], True),
    ]
    assert item["input_ids"] == [token for piece, _ in pieces for token in piece]
    assert item["labels"] == [
        token if trained else IGNORE_INDEX for piece, trained in pieces for token in piece
    ]
    assert tiny_tokenizer.decode(item["input_ids"]) == (
        "Be brief. USER: Add 12 and 30. ASSISTANT:42</s>USER: Sort 3 1 2. ASSISTANT:1 2 3</s>"
    )
    default_system = Conversation(None, CONVERSATION.exchanges, "t:row 1")
    item = tokenize_examples([default_system], tiny_tokenizer, "vicuna")[0]
    assert tiny_tokenizer.decode(item["input_ids"]).startswith(
        f"{VICUNA_SYSTEM} USER: Add 12 and 30. ASSISTANT:42</s>"
    )


def test_single_turn_conversation_tokenises_like_the_single_turn_example(tiny_tokenizer):
    conversation = Conversation(None, (Exchange("Add 12 and 30.", "42"),), "t:row 0")
    example = Example("Add 12 and 30.", "", "42", "t:row 0")
    for template in ["vicuna", "alpaca", "plain"]:
        assert (
            tokenize_examples([conversation], tiny_tokenizer, template)[0]
            == tokenize_examples([example], tiny_tokenizer, template)[0]
        )


def test_context_turns_of_a_conversational_prompt_are_not_trained(tiny_tokenizer):
    conversation = Conversation(None, (Exchange("q1", "a1", train=False), Exchange("q2", "a2")), "t:row 0")
    item = tokenize_examples([conversation], tiny_tokenizer, "vicuna")[0]
    runs = trained_runs(item["labels"])
    assert len(runs) == 1
    assert tiny_tokenizer.decode(item["input_ids"][runs[0][0] : runs[0][1]]) == "a2</s>"


def test_alpaca_and_plain_refuse_what_they_cannot_render(tiny_tokenizer):
    for template in ["alpaca", "plain"]:
        with pytest.raises(
            DataError, match=f"t:row 0: template '{template}' renders one instruction .* a system"
        ):
            tokenize_examples([CONVERSATION], tiny_tokenizer, template)


def test_truncation_counts_turns(tiny_tokenizer):
    full = tokenize_examples([CONVERSATION], tiny_tokenizer, "vicuna", max_length=512)
    runs = trained_runs(full[0]["labels"])
    cut = tokenize_examples([CONVERSATION], tiny_tokenizer, "vicuna", max_length=runs[1][0] + 1)
    assert (full.stats.turns_trained, full.stats.turns_truncated, full.n_truncated) == (2, 0, 0)
    assert (cut.stats.turns_trained, cut.stats.turns_truncated, cut.n_truncated) == (2, 1, 1)
    assert cut[0]["input_ids"] == full[0]["input_ids"][: runs[1][0] + 1]
    cut = tokenize_examples([CONVERSATION], tiny_tokenizer, "vicuna", max_length=runs[0][1])
    assert (cut.stats.turns_trained, cut.stats.turns_truncated) == (1, 1)
    assert trained_runs(cut[0]["labels"]) == [runs[0]]


def test_the_store_counts_examples_and_tokens_from_its_offsets(tiny_tokenizer, tmp_path):
    """Examples and tokens are not kept twice: the store's offsets hold them, also once it is opened again."""
    from symnoise.data.store import TokenizedDataset

    examples = [Example(f"say {'a ' * n}", "", "b " * n, f"t:row {n}") for n in (1, 4, 9)]
    dataset = tokenize_examples(examples, tiny_tokenizer, "alpaca", max_length=512)
    lengths = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
    assert len(dataset) == 3 and dataset.n_tokens == sum(lengths) == sum(dataset.lengths)
    reopened = TokenizedDataset.open(dataset.directory)
    assert (len(reopened), reopened.n_tokens) == (3, sum(lengths))
    assert [reopened[i] for i in range(3)] == [dataset[i] for i in range(3)]


def sharegpt_oracle(tokenizer, records, max_length):
    """(turns trained, turns truncated) computed from the pieces' lengths, independently of the tokeniser."""
    trained = truncated = 0
    for record in records:
        position = 0
        for k, exchange in enumerate(record.exchanges):
            head = f"{VICUNA_SYSTEM} " if k == 0 else ""
            position += len(ids(tokenizer, f"{head}USER: {exchange.user} ASSISTANT:"))
            end = position + len(ids(tokenizer, exchange.assistant)) + 1
            trained += position < max_length
            truncated += end > max_length
            position = end
    return trained, truncated


@pytest.mark.parametrize("max_length", [4096, 160])
def test_sharegpt_sample_report_counts(shared_data, tiny_tokenizer, max_length):
    path = str(shared_data / SHAREGPT)
    records, _ = load_records(path)
    expect_trained, expect_truncated = sharegpt_oracle(tiny_tokenizer, records, max_length)
    dataset, report = prepare_dataset(DatasetSpec(path), tiny_tokenizer, max_length, cache=False)
    counts = report.to_dict()
    print(f"\nsharegpt at max_length {max_length}: {report.summary()}")
    assert (counts["rows"], counts["conversations"], counts["assistant_turns"]) == (500, 500, 1000)
    assert (counts["turns_trained"], counts["turns_truncated"]) == (expect_trained, expect_truncated)
    assert counts["template"] == "vicuna" and counts["skipped"] == {} and counts["turns_unused"] == 0
    if max_length == 4096:
        assert (expect_trained, expect_truncated, len(dataset)) == (1000, 0, 500)
        assert sum(len(trained_runs(item["labels"])) for item in dataset) == 1000
    else:
        assert expect_truncated > 0
    _, first = prepare_dataset(DatasetSpec(path, turns="first"), tiny_tokenizer, max_length, cache=False)
    counts = first.to_dict()
    assert (counts["assistant_turns"], counts["turns_unused"]) == (500, 500)
    assert counts["turns_trained"] == sum(
        1
        for r in records
        if len(ids(tiny_tokenizer, f"{VICUNA_SYSTEM} USER: {r.exchanges[0].user} ASSISTANT:")) < max_length
    )


# ----------------------------------------------------------------------------------- chat templates

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
ZEPHYR = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# family: (template, bos, eos, end-of-turn text after each reply, supports a system message)
FAMILIES = {
    "chatml-qwen": (CHATML, None, "<|im_end|>", "<|im_end|>", True),
    "llama-3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", True),
    "gemma": (GEMMA, "<bos>", "<eos>", "<end_of_turn>", False),
    "mistral": (MISTRAL, "<s>", "</s>", "</s>", False),
    "zephyr": (ZEPHYR, None, "</s>", "</s>", True),
}
SPECIAL = [
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<bos>",
    "<eos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
]


def family_tokenizer(tiny_tokenizer, family):
    template, bos, eos, _, _ = FAMILIES[family]
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    tokenizer.bos_token, tokenizer.eos_token = bos, eos
    tokenizer.chat_template = template
    return tokenizer


def expected_mask(tokenizer, text: str, replies: list[str], end_of_turn: str) -> list[bool]:
    """Trained tokens found by searching the text for each reply followed by its end-of-turn marker, left to
    right: another method than the tokeniser's (prefix renders)."""
    ranges, cursor = [], 0
    for reply in replies:
        start = text.index(reply + end_of_turn, cursor)
        cursor = start + len(reply) + len(end_of_turn)
        ranges.append((start, cursor))
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [any(a <= start < b for a, b in ranges) for start, _ in offsets]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chat_template_ids_and_masks_are_exact(tiny_tokenizer, family):
    _, bos, _, end_of_turn, has_system = FAMILIES[family]
    tokenizer = family_tokenizer(tiny_tokenizer, family)
    conversation = CONVERSATION if has_system else Conversation(None, CONVERSATION.exchanges, "t:row 0")
    item = tokenize_examples([conversation], tokenizer, "chat", max_length=512)[0]
    expected_ids = tokenizer.apply_chat_template(conversation.messages())["input_ids"]
    assert item["input_ids"] == expected_ids
    text = tokenizer.apply_chat_template(conversation.messages(), tokenize=False)
    replies = [exchange.assistant for exchange in conversation.exchanges]
    mask = expected_mask(tokenizer, text, replies, end_of_turn)
    assert [label != IGNORE_INDEX for label in item["labels"]] == mask
    runs = trained_runs(item["labels"])
    assert [tokenizer.decode(item["input_ids"][a:b]) for a, b in runs] == [r + end_of_turn for r in replies]
    assert item["labels"][-1] == IGNORE_INDEX or text.endswith(end_of_turn)
    if bos is not None:
        assert (
            item["input_ids"].count(tokenizer.bos_token_id) == 1
            and item["input_ids"][0] == tokenizer.bos_token_id
        )
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    assert item["input_ids"].count(eot_id) == text.count(end_of_turn)  # nothing appended, nothing doubled


def test_chat_template_single_turn_example_and_errors(tiny_tokenizer):
    tokenizer = family_tokenizer(tiny_tokenizer, "chatml-qwen")
    example = Example("Sort these", "3 1 2", "1 2 3", "t:row 0")
    item = tokenize_examples([example], tokenizer, "chat")[0]
    messages = [{"role": "user", "content": "Sort these\n\n3 1 2"}, {"role": "assistant", "content": "1 2 3"}]
    assert item["input_ids"] == tokenizer.apply_chat_template(messages)["input_ids"]
    gemma = family_tokenizer(tiny_tokenizer, "gemma")
    with pytest.raises(
        DataError,
        match="t:row 0: the tokenizer's chat template cannot render this conversation: "
        ".*System role not supported",
    ):
        tokenize_examples([CONVERSATION], gemma, "chat")
    with pytest.raises(DataError, match="template 'chat' needs a tokenizer that has a chat template"):
        tokenize_examples([example], tiny_tokenizer, "chat")


def test_noise_region_follows_the_multi_turn_masks(tiny_tokenizer, tiny_model_factory):
    """region=response noises exactly the trained tokens (all replies and their end tokens), region=prompt the rest."""
    import symnoise

    tokenizer = family_tokenizer(tiny_tokenizer, "chatml-qwen")
    item = tokenize_examples([CONVERSATION], tokenizer, "chat")[0]
    batch = {key: torch.tensor([value]) for key, value in item.items()}
    trained = batch["labels"][0] != IGNORE_INDEX
    model = tiny_model_factory("llama", vocab_size=len(tokenizer))
    model.train()
    captured = {}
    model.get_input_embeddings().register_forward_hook(
        lambda m, i, o: captured.__setitem__("clean", o.detach())
    )
    outputs = []
    model.model.layers[0].register_forward_pre_hook(
        lambda m, args, kwargs: outputs.append(
            kwargs.get("hidden_states", args[0] if args else None).detach()
        ),
        with_kwargs=True,
    )
    for region, expected in [("response", trained), ("prompt", ~trained)]:
        outputs.clear()
        with symnoise.attach(model, symnoise.NoiseConfig("gaussian", alpha=5.0, region=region, seed=0)):
            model(**batch)
        noised = (outputs[0][0] - captured["clean"][0]).abs().sum(-1) > 0
        assert noised.tolist() == expected.tolist()


# ----------------------------------------------------------------------------------- mixtures and cache


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_mixture_of_two_formats(tmp_path, tiny_tokenizer):
    alpaca = write_jsonl(
        tmp_path / "a.jsonl",
        [{"instruction": f"Add {k} and 1.", "input": "", "output": str(k + 1)} for k in range(10)],
    )
    chat = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": f"q{k}"},
                    {"role": "assistant", "content": f"a{k}"},
                    {"role": "user", "content": "again"},
                    {"role": "assistant", "content": "ok"},
                ]
            }
            for k in range(4)
        ],
    )
    specs = [DatasetSpec(alpaca, weight=0.5), DatasetSpec(chat, weight=2)]
    data = prepare_training_data(specs, tiny_tokenizer, 128, seed=0, cache=False)
    assert isinstance(data.train, MixedDataset) and len(data.train) == 5 + 8 and data.selected == [5, 8]
    assert [r.template for r in data.reports] == ["alpaca", "vicuna"]
    report = data.to_dict()
    assert [d["format"] for d in report["datasets"]] == ["alpaca", "messages"]
    assert report["datasets"][1]["turns_trained"] == 8 and report["examples"] == 13
    chat_items = [data.train[i] for i in range(5, 13)]
    assert all(len(trained_runs(item["labels"])) == 2 for item in chat_items)
    assert chat_items[:4] == chat_items[4:]
    assert data.train.sources[5].endswith("c.jsonl:row 0 (line 1)")
    assert sorted(weighted_selection(10, 0.5, np.random.default_rng(0)).tolist()) == sorted(
        data.train.index_in[:5].tolist()
    )
    again = prepare_training_data(specs, tiny_tokenizer, 128, seed=0, cache=False)
    assert again.train.index_in.tolist() == data.train.index_in.tolist()
    limited = prepare_training_data(
        [DatasetSpec(alpaca, limit=3), DatasetSpec(chat)], tiny_tokenizer, 128, 0, cache=False
    )
    assert limited.selected == [3, 4]


def test_tokenised_data_is_cached_by_content(tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("SYMNOISE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "a.jsonl"
    rows = [{"instruction": f"Add {k} and 1.", "input": "", "output": str(k + 1)} for k in range(20)]
    write_jsonl(path, rows)
    first, report = prepare_dataset(DatasetSpec(str(path)), tiny_tokenizer, 64)
    second, cached = prepare_dataset(DatasetSpec(str(path)), tiny_tokenizer, 64)
    assert not report.cached and cached.cached and cached.to_dict() == {**report.to_dict(), "cached": True}
    assert [second[i] for i in range(len(second))] == [first[i] for i in range(len(first))]
    assert second.ids.dtype == np.uint16 and isinstance(second.ids, np.memmap)
    assert len(list((tmp_path / "cache" / "tokenized").iterdir())) == 1
    write_jsonl(path, rows[:-1])  # new content: tokenised again
    third, changed = prepare_dataset(DatasetSpec(str(path)), tiny_tokenizer, 64)
    assert not changed.cached and len(third) == 19
    _, other = prepare_dataset(DatasetSpec(str(path)), tiny_tokenizer, 100)  # another setting: another entry
    assert not other.cached and len(list((tmp_path / "cache" / "tokenized").iterdir())) == 3


# ----------------------------------------------------------------------------------- properties

PROPERTY = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Replies that start with whitespace can share a token with the header before them (byte-level BPE merges "\n\n"),
# and such a token is counted with the prompt; the property covers replies that start with a visible character.
content = st.text(min_size=1, max_size=30).filter(lambda t: t.strip() and not t[0].isspace())
conversations = st.builds(
    lambda system, turns: Conversation(system, tuple(Exchange(u, a) for u, a in turns), "p:row 0"),
    st.one_of(st.none(), content),
    st.lists(st.tuples(content, content), min_size=1, max_size=3),
)


@PROPERTY
@given(conversation=conversations)
def test_chatml_ids_and_masks_on_arbitrary_text(tiny_tokenizer, conversation):
    tokenizer = family_tokenizer(tiny_tokenizer, "chatml-qwen")
    item = tokenize_examples([conversation], tokenizer, "chat", max_length=4096)[0]
    assert item["input_ids"] == tokenizer.apply_chat_template(conversation.messages())["input_ids"]
    runs = trained_runs(item["labels"])
    assert [tokenizer.decode(item["input_ids"][a:b]) for a, b in runs] == [
        exchange.assistant + "<|im_end|>" for exchange in conversation.exchanges
    ]


@PROPERTY
@given(conversation=conversations, max_length=st.integers(2, 200))
def test_vicuna_pieces_and_truncation_on_arbitrary_text(tiny_tokenizer, conversation, max_length):
    eos = tiny_tokenizer.eos_token_id
    pieces, spans = [], []
    for k, exchange in enumerate(conversation.exchanges):
        head = (
            f"{conversation.system if conversation.system is not None else VICUNA_SYSTEM} " if k == 0 else ""
        )
        pieces += ids(tiny_tokenizer, f"{head}USER: {exchange.user} ASSISTANT:")
        start = len(pieces)
        pieces += [*ids(tiny_tokenizer, exchange.assistant), eos]
        spans.append((start, len(pieces)))
    kept = [(a, min(b, max_length)) for a, b in spans if a < max_length]
    if not kept:
        with pytest.raises(
            DataError,
            match=rf"every one of the 1 prompts \(vicuna template\) is at least max_length={max_length} ",
        ):
            tokenize_examples([conversation], tiny_tokenizer, "vicuna", max_length)
        return
    data = tokenize_examples([conversation], tiny_tokenizer, "vicuna", max_length)
    assert data[0]["input_ids"] == pieces[:max_length]
    assert trained_runs(data[0]["labels"]) == kept
    assert data.stats.turns_truncated == sum(b > max_length for _, b in spans)
    assert data.stats.turns_trained == len(kept)


@pytest.mark.parametrize("lost", ["ids.bin", "meta.json"])
def test_a_damaged_cache_entry_is_tokenised_again_and_replaced(tmp_path, tiny_tokenizer, monkeypatch, lost):
    """An entry missing a file (a copied or half-deleted cache) must not be opened: tokenise again, replace it."""
    monkeypatch.setenv("SYMNOISE_CACHE", str(tmp_path / "cache"))
    path = write_jsonl(
        tmp_path / "a.jsonl", [{"instruction": f"Add {k} and 1.", "output": str(k + 1)} for k in range(5)]
    )
    first, _ = prepare_dataset(DatasetSpec(path), tiny_tokenizer, 64)
    expected = [first[i] for i in range(len(first))]
    (entry,) = (tmp_path / "cache" / "tokenized").iterdir()
    (entry / lost).unlink()
    again, report = prepare_dataset(DatasetSpec(path), tiny_tokenizer, 64)
    assert not report.cached and [again[i] for i in range(len(again))] == expected
    assert (entry / lost).is_file()  # the entry was replaced by a complete one
    _, cached = prepare_dataset(DatasetSpec(path), tiny_tokenizer, 64)
    assert cached.cached


def test_an_unwritable_cache_place_tokenises_without_caching(tmp_path, tiny_tokenizer, monkeypatch, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("SYMNOISE_CACHE", str(blocker))
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Add 1 and 1.", "output": "2"}])
    with caplog.at_level("WARNING", logger="symnoise.data"):
        dataset, report = prepare_dataset(DatasetSpec(path), tiny_tokenizer, 128)
    assert len(dataset) == 1 and not report.cached
    assert "not writable" in caplog.text and "tokenising without a cache" in caplog.text
