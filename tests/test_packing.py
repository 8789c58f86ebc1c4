"""The recipe's batch layouts (`symnoise.train.recipe.make_collator`, `data.group_by_length`) on a tiny Llama.

Padding-free batches must be an exact re-layout of padded ones: the same loss and gradients, no attention across
a sequence boundary, and each sequence keeping its own noise scale. Length grouping must cut padding.
`tests/test_attach.py` covers the attachment on hand-built packed rows; these tests go through the collators and
the sampler `symnoise train` actually uses.
"""

import math

import pytest
import torch
import transformers

from symnoise import NoiseConfig, attach
from symnoise.data import pack_rows, real_token_count, tokenize_examples
from symnoise.data.packing import balanced_rows
from symnoise.synthetic import make_task_examples, tiny_llama_config, tokenizer_corpus, train_tokenizer
from symnoise.train.config import validate_config
from symnoise.train.recipe import make_collator, training_arguments

ALPHA = 5.0
HIDDEN = 32
FLASH_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


@pytest.fixture(scope="module")
def data():
    """A tokenizer trained on synthetic tasks and 480 tokenised examples of varied length (prompts masked).

    480, because transformers' length-grouped sampler sorts mega-batches of min(n / (4 x batch), 50) batches:
    with 64 examples it would sort only pairs of batches and hardly group at all."""
    train, _ = make_task_examples(480, 11, seed=0)
    tokenizer = train_tokenizer(tokenizer_corpus(train), vocab_size=400)
    dataset = tokenize_examples(train, tokenizer, "alpaca", max_length=128)
    assert len(set(dataset.lengths)) > 10  # varied lengths, or padding would not matter
    return tokenizer, dataset


def config(packing="none", group_by_length=False, out="out"):
    return validate_config(
        {
            "model": {"name": "m"},
            "data": {"path": "d.json", "packing": packing, "group_by_length": group_by_length},
            "training": {
                "output_dir": str(out),
                "per_device_batch_size": 8,
                "effective_batch_size": 8,
                "report_to": [],
                "device": "cpu",
            },
        }
    )


def tiny_llama(tokenizer, attn="sdpa"):
    torch.manual_seed(0)
    cfg = tiny_llama_config(len(tokenizer), hidden_size=HIDDEN, layers=2, heads=4, kv_heads=2)
    model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation=attn).float()
    model.config.use_cache = False  # as recipe.load_model does
    return model.train()


ROW_LENGTH = (
    256  # data.max_length, the `rows` layout's row length (the examples are tokenised to at most 128)
)


def batches(data, rows=slice(0, 6)):
    tokenizer, dataset = data
    features = [dataset[i] for i in range(len(dataset))[rows]]
    padded = make_collator(config("none"), tokenizer)(features)
    packed = make_collator(config("padding_free"), tokenizer)(features)
    return features, padded, packed


def row_batch(data, rows=slice(0, 12)):
    """The `rows` layout of 12 examples: several rows, some ending in a filler segment."""
    tokenizer, dataset = data
    features = [dataset[i] for i in range(len(dataset))[rows]]
    cfg = validate_config(
        {
            "model": {"name": "m"},
            "data": {"path": "d.json", "packing": "rows", "max_length": ROW_LENGTH},
            "training": {"output_dir": "out", "report_to": [], "device": "cpu"},
        }
    )
    packed = make_collator(cfg, tokenizer)(features)
    padded = make_collator(config("none"), tokenizer)(features)
    return features, padded, packed


def row_segments(batch, features):
    """(row, start, feature index) of every sequence in a `rows` batch, recovered by matching token ids."""
    found = []
    lengths = [len(f["input_ids"]) for f in features]
    for row in range(batch["input_ids"].shape[0]):
        positions = batch["position_ids"][row].tolist()
        starts = [k for k, p in enumerate(positions) if p == 0] + [len(positions)]
        for start, end in zip(starts, starts[1:], strict=False):
            ids = batch["input_ids"][row, start:end].tolist()
            matches = [
                i for i, f in enumerate(features) if list(f["input_ids"]) == ids and lengths[i] == end - start
            ]
            if matches:
                found.append((row, start, matches[0]))
    return found


def test_recipe_collators_give_the_layouts_they_promise(data):
    features, padded, packed = batches(data)
    lengths = [len(f["input_ids"]) for f in features]
    assert padded["input_ids"].shape == (len(features), max(lengths))
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    assert packed["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]


def test_pack_rows_places_every_sequence_once_within_the_row_length():
    generator = torch.Generator().manual_seed(0)
    for case in range(200):
        row_length = int(torch.randint(1, 64, (1,), generator=generator))
        lengths = torch.randint(
            1, row_length + 1, (int(torch.randint(1, 20, (1,), generator=generator)),), generator=generator
        ).tolist()
        rows = pack_rows(lengths, row_length)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths))), case
        assert all(sum(lengths[i] for i in row) <= row_length for row in rows), case
        # first-fit decreasing never needs more than 11/9 OPT + 1 rows; a lower bound on OPT is the total / capacity
        assert len(rows) <= 11 / 9 * math.ceil(sum(lengths) / row_length) + 1, case
        balanced = balanced_rows(lengths, row_length)
        assert sorted(i for row in balanced for i in row) == list(range(len(lengths))), case
        widths = [sum(lengths[i] for i in row) for row in balanced]
        assert max(widths) <= row_length, case
        area = len(balanced) * max(widths)
        assert area <= len(lengths) * max(lengths), case  # never more positions than padding
        assert area <= len(rows) * max(sum(lengths[i] for i in row) for row in rows), case
    assert pack_rows([5, 3, 2, 4, 1], 6) == [[0, 4], [3, 2], [1]]
    assert balanced_rows([5, 3, 2, 4, 1], 100) == [[0, 3, 1, 2, 4]]
    assert pack_rows([6, 6, 6], 12) == [[0, 1], [2]]  # 2 rows x 12 = 24 positions
    assert balanced_rows([6, 6, 6], 12) == [[0], [1], [2]]  # 3 rows x 6 = 18
    with pytest.raises(ValueError, match="sequence 1 has 9 tokens, more than the row length 8"):
        pack_rows([3, 9], 8)


def test_rows_layout_packs_each_sequence_whole_with_its_own_positions(data):
    features, padded, packed = row_batch(data)
    assert set(packed) == {"input_ids", "labels", "position_ids", "use_cache", *FLASH_KWARGS}
    assert packed["use_cache"] is False
    rows, width = packed["input_ids"].shape
    assert 1 < rows < len(features) and width <= ROW_LENGTH
    segments = row_segments(packed, features)
    assert sorted(index for _, _, index in segments) == list(range(len(features)))
    for row, start, index in segments:
        n = len(features[index]["input_ids"])
        assert packed["position_ids"][row, start : start + n].tolist() == list(range(n))
        assert packed["labels"][row, start : start + n].tolist() == [-100, *features[index]["labels"][1:]]
    real = sum(len(f["input_ids"]) for f in features)
    assert int(real_token_count(packed)) == real == int(padded["attention_mask"].sum())
    filler = packed["input_ids"].numel() - real
    assert 0 < filler < padded["input_ids"].numel() - real  # less filler than padding (238 against 334 here)
    assert (packed["labels"] == -100).sum() >= filler


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_no_sequence_attends_across_a_row_boundary(data, attn):
    features, _, packed = row_batch(data)
    model = tiny_llama(data[0], attn).eval()
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits
        for row, start, index in row_segments(packed, features):
            ids = torch.tensor([features[index]["input_ids"]])
            alone = model(input_ids=ids).logits[0]
            torch.testing.assert_close(logits[row, start : start + ids.shape[1]], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["bernoulli", "symnoise"])
def test_each_sequence_keeps_its_own_noise_scale_in_rows(data, method):
    features, _, packed = row_batch(data)
    model = tiny_llama(data[0])
    recorder = NoiseRecorder(model)
    with attach(model, NoiseConfig(method, ALPHA, seed=0)):
        model(**packed)
    ids = packed["input_ids"]
    noise = recorder.noise(torch.cat([ids, ids]) if method == "symnoise" else ids)
    if method == "symnoise":
        first, second = noise.split(len(ids))
        torch.testing.assert_close(second, -first, rtol=0, atol=1e-6)
        noise = first
    for row, start, index in row_segments(packed, features):
        n = len(features[index]["input_ids"])
        chunk = noise[row, start : start + n]
        torch.testing.assert_close(
            chunk.abs(), torch.full_like(chunk, ALPHA / math.sqrt(3 * n * HIDDEN)), rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("layout", ["padding_free", "rows"])
def test_packed_and_padded_batches_give_the_same_loss_and_gradients(data, attn, layout):
    _, padded, packed = batches(data) if layout == "padding_free" else row_batch(data)
    model = tiny_llama(data[0], attn)
    results = []
    for batch in (padded, packed):
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_pad, grads_pad), (loss_pack, grads_pack) = results
    assert loss_pack.item() == pytest.approx(loss_pad.item(), rel=1e-5)
    for name, grad in grads_pad.items():
        torch.testing.assert_close(grads_pack[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_no_sequence_attends_across_a_packed_boundary(data, attn):
    features, _, packed = batches(data)
    model = tiny_llama(data[0], attn).eval()
    with torch.no_grad():
        packed_logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[0]
        start = 0
        for feature in features:
            ids = torch.tensor([feature["input_ids"]])
            alone = model(input_ids=ids).logits[0]
            torch.testing.assert_close(
                packed_logits[start : start + ids.shape[1]], alone, rtol=1e-4, atol=1e-5
            )
            start += ids.shape[1]


class NoiseRecorder:
    """The noise symnoise adds: what the embedding module returns after symnoise's hook, minus the clean output."""

    def __init__(self, model):
        self.embeddings = model.get_input_embeddings()
        self.outputs = []
        hook = self.embeddings.register_forward_hook(
            lambda m, a, out: self.outputs.append(out.detach().clone())
        )
        # keep this hook after symnoise's, which is registered later
        self.embeddings.register_forward_pre_hook(
            lambda m, a: self.embeddings._forward_hooks.move_to_end(hook.id)
        )

    def noise(self, ids):
        with torch.no_grad():
            return self.outputs[-1] - self.embeddings(ids)


@pytest.mark.parametrize("method", ["bernoulli", "symnoise"])
@pytest.mark.parametrize("packing", ["none", "padding_free"])
def test_each_sequence_keeps_its_own_noise_scale_in_both_layouts(data, packing, method):
    """Bernoulli noise has exactly one magnitude per sequence, alpha / sqrt(3 L d), so the per-token scale can
    be checked exactly: a packed row must not use the row's length (nor the padded length) for L."""
    features, padded, packed = batches(data)
    batch = packed if packing == "padding_free" else padded
    lengths = [len(f["input_ids"]) for f in features]
    model = tiny_llama(data[0])
    recorder = NoiseRecorder(model)
    with attach(model, NoiseConfig(method, ALPHA, seed=0)):
        model(**batch)
    ids = batch["input_ids"]
    symmetric = method == "symnoise"
    # Without a varlen kernel the copy of a packed row is a second row (symnoise.attach._prepare_symmetric).
    doubled = torch.cat([ids, ids], dim=0) if symmetric else ids
    noise = recorder.noise(doubled)
    if symmetric:  # the X - eps copy carries exactly the negated noise
        first, second = noise.split(len(ids))
        torch.testing.assert_close(second, -first, rtol=0, atol=1e-6)
        noise = first
    if packing == "padding_free":
        per_sequence = noise[0].split(lengths)
    else:
        per_sequence = [noise[i, :n] for i, n in enumerate(lengths)]
        padding = batch["attention_mask"] == 0
        assert padding.any() and noise[padding].abs().max().item() == 0.0  # padding is never noised
    for n, chunk in zip(lengths, per_sequence, strict=True):
        expected = ALPHA / math.sqrt(3 * n * HIDDEN)
        torch.testing.assert_close(chunk.abs(), torch.full_like(chunk, expected), rtol=1e-5, atol=1e-7)
        assert chunk.square().sum().sqrt().item() == pytest.approx(ALPHA / math.sqrt(3), rel=1e-5)


def padding_fraction(trainer) -> float:
    real = positions = 0
    for batch in trainer.get_train_dataloader():
        positions += batch["input_ids"].numel()
        real += int(real_token_count(batch))
    return 1 - real / positions


def test_grouping_and_rows_cut_padding_and_padding_free_has_none(data, tmp_path):
    """Through the recipe's TrainingArguments and collator, over a whole epoch of the same examples."""
    tokenizer, dataset = data
    model = tiny_llama(tokenizer)
    fractions = {}
    for name, packing, grouped in [
        ("random", "none", False),
        ("grouped", "none", True),
        ("padding_free", "padding_free", False),
        ("rows", "rows", False),
    ]:
        cfg = config(packing, grouped, tmp_path / name)
        args = training_arguments(cfg, tmp_path / name, "fp32", has_eval=False)
        trainer = transformers.Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=make_collator(cfg, tokenizer),
            processing_class=tokenizer,
        )
        fractions[name] = padding_fraction(trainer)
    assert fractions["random"] > 0.08, fractions  # there is padding to remove
    assert fractions["grouped"] < 0.5 * fractions["random"], fractions
    assert fractions["padding_free"] == 0.0
    # Rows pack each random batch of 8 on its own: 8.5% filler against 13.3% padding on these even lengths.
    assert fractions["rows"] < 0.7 * fractions["random"], fractions
