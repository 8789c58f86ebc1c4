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
from symnoise.data import tokenize_examples
from symnoise.synthetic import make_task_examples, tiny_llama_config, tokenizer_corpus, train_tokenizer
from symnoise.train.config import validate_config
from symnoise.train.recipe import make_collator, training_arguments

ALPHA = 5.0
HIDDEN = 32


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
    return validate_config({"model": {"name": "m"}, "data": {"path": "d.json", "packing": packing,
                                                             "group_by_length": group_by_length},
                            "training": {"output_dir": str(out), "per_device_batch_size": 8,
                                         "effective_batch_size": 8, "report_to": [], "device": "cpu"}})


def tiny_llama(tokenizer, attn="sdpa"):
    torch.manual_seed(0)
    cfg = tiny_llama_config(len(tokenizer), hidden_size=HIDDEN, layers=2, heads=4, kv_heads=2)
    model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation=attn).float()
    model.config.use_cache = False  # as recipe.load_model does
    return model.train()


def batches(data, rows=slice(0, 6)):
    tokenizer, dataset = data
    features = [dataset[i] for i in range(len(dataset))[rows]]
    padded = make_collator(config("none"), tokenizer)(features)
    packed = make_collator(config("padding_free"), tokenizer)(features)
    return features, padded, packed


def test_recipe_collators_give_the_layouts_they_promise(data):
    features, padded, packed = batches(data)
    lengths = [len(f["input_ids"]) for f in features]
    assert padded["input_ids"].shape == (len(features), max(lengths))
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    assert packed["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_and_padded_batches_give_the_same_loss_and_gradients(data, attn):
    _, padded, packed = batches(data)
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
            torch.testing.assert_close(packed_logits[start:start + ids.shape[1]], alone, rtol=1e-4, atol=1e-5)
            start += ids.shape[1]


class NoiseRecorder:
    """The noise symnoise adds: what the embedding module returns after symnoise's hook, minus the clean output."""

    def __init__(self, model):
        self.embeddings = model.get_input_embeddings()
        self.outputs = []
        hook = self.embeddings.register_forward_hook(lambda m, a, out: self.outputs.append(out.detach().clone()))
        # keep this hook after symnoise's, which is registered later
        self.embeddings.register_forward_pre_hook(lambda m, a: self.embeddings._forward_hooks.move_to_end(hook.id))

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
        real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    return 1 - real / positions


def test_length_grouped_sampler_cuts_padding_and_padding_free_has_none(data, tmp_path):
    """Through the recipe's TrainingArguments and collator, over a whole epoch of the same examples."""
    tokenizer, dataset = data
    model = tiny_llama(tokenizer)
    fractions = {}
    for name, packing, grouped in [("random", "none", False), ("grouped", "none", True),
                                   ("padding_free", "padding_free", False)]:
        cfg = config(packing, grouped, tmp_path / name)
        args = training_arguments(cfg, tmp_path / name, "fp32", has_eval=False)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset,
                                       data_collator=make_collator(cfg, tokenizer), processing_class=tokenizer)
        fractions[name] = padding_fraction(trainer)
    assert fractions["random"] > 0.08, fractions  # there is padding to remove
    assert fractions["grouped"] < 0.5 * fractions["random"], fractions
    assert fractions["padding_free"] == 0.0
