"""`training.trained_logits_only`: logits only where a next token is trained, with exactly the full loss.

`symnoise.data.packing.TrainedLogitsOnly` adds per-row ``logits_to_keep`` positions and ``shift_labels`` to a
collated batch; the model then projects only those hidden states onto the vocabulary. The loss and every gradient
must equal those of the full logits, in every batch layout, with noise attached (SymNoise doubles the batch and
must double the positions with it), and through the recipe.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from symnoise import NoiseConfig, attach
from symnoise.data import tokenize_examples
from symnoise.data.packing import TrainedLogitsOnly, supports_trained_logits_only
from symnoise.pair import _double_logits_to_keep
from symnoise.synthetic import make_task_examples, tiny_llama_config, tokenizer_corpus, train_tokenizer
from symnoise.train import train
from symnoise.train.config import validate_config
from symnoise.train.recipe import make_collator


@pytest.fixture(scope="module")
def data():
    train_examples, _ = make_task_examples(64, 11, seed=2)
    tokenizer = train_tokenizer(tokenizer_corpus(train_examples), vocab_size=400)
    dataset = tokenize_examples(train_examples, tokenizer, "alpaca", max_length=128)
    return tokenizer, [dataset[i] for i in range(10)]


def collator(tokenizer, packing):
    config = validate_config(
        {
            "model": {"name": "m"},
            "data": {"path": "d.json", "packing": packing, "max_length": 256},
            "training": {"output_dir": "out", "report_to": [], "device": "cpu"},
        }
    )
    return make_collator(config, tokenizer)


def tiny_llama(tokenizer):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM._from_config(
        tiny_llama_config(len(tokenizer), hidden_size=32, layers=2, heads=4, kv_heads=2),
        attn_implementation="sdpa",
    )
    model.config.use_cache = False
    return model.float().train()


def loss_and_grads(model, batch, noise: NoiseConfig | None = None):
    model.zero_grad(set_to_none=True)
    if noise is None:
        output = model(**batch)
        output.loss.backward()
    elif noise.execution == "paired":
        with attach(model, noise) as handle:
            for weight in handle.paired_passes():
                output = model(**batch)
                (output.loss * weight).backward()
    else:
        with attach(model, noise):
            output = model(**batch)
            output.loss.backward()
    return output, {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same(full, kept):
    torch.testing.assert_close(kept[0].loss, full[0].loss, rtol=1e-6, atol=1e-7)
    for name, grad in full[1].items():
        torch.testing.assert_close(kept[1][name], grad, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("packing", ["none", "rows", "padding_free"])
def test_kept_positions_are_exactly_the_trained_ones(data, packing):
    tokenizer, features = data
    plain = collator(tokenizer, packing)(features)
    batch = TrainedLogitsOnly(collator(tokenizer, packing))(features)
    shifted = torch.nn.functional.pad(plain["labels"][:, 1:], (0, 1), value=-100)
    rows, width = batch["logits_to_keep"].shape
    assert rows == shifted.shape[0] and width < shifted.shape[1]  # fewer logits than positions
    for row in range(rows):
        trained = (shifted[row] != -100).nonzero().flatten().tolist()
        kept = batch["logits_to_keep"][row].tolist()
        assert kept[: len(trained)] == trained  # every trained position once, in order
        assert all(shifted[row, p] == -100 for p in kept[len(trained) :])  # the rest are untrained fillers
        assert batch["shift_labels"][row].tolist() == shifted[row, kept].tolist()
    assert torch.equal(batch["labels"], plain["labels"])


@pytest.mark.parametrize("packing", ["none", "rows", "padding_free"])
@pytest.mark.parametrize("method", [None, "uniform", "symnoise", "symnoise-paired"])
def test_same_loss_and_gradients_as_full_logits(data, packing, method):
    tokenizer, features = data
    model = tiny_llama(tokenizer)
    noise = None
    if method is not None:
        name, _, execution = method.partition("-")
        noise = NoiseConfig(name, alpha=5, seed=1, execution=execution or "concat")
    full = loss_and_grads(model, collator(tokenizer, packing)(features), noise)
    kept = loss_and_grads(model, TrainedLogitsOnly(collator(tokenizer, packing))(features), noise)
    assert_same(full, kept)
    assert kept[0].logits.shape[1] < full[0].logits.shape[1]


def test_a_boolean_mask_and_flattened_targets_also_fold_under_symnoise(data):
    tokenizer, features = data
    model = tiny_llama(tokenizer)
    batch = collator(tokenizer, "none")(features)
    full = loss_and_grads(model, batch, NoiseConfig("symnoise", alpha=5, seed=1))
    shifted = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    mask = shifted != -100
    masked = loss_and_grads(
        model,
        {**batch, "logits_to_keep": mask, "shift_labels": shifted[mask]},
        NoiseConfig("symnoise", alpha=5, seed=1),
    )
    assert_same(full, masked)
    assert masked[0].logits.shape == (int(mask.sum()), len(tokenizer))  # the X + eps half


def test_positions_double_with_the_batch_or_the_row():
    rows = torch.tensor([[3, 5], [1, 2]])
    assert torch.equal(_double_logits_to_keep(rows, 0, 8), torch.tensor([[3, 5], [1, 2], [3, 5], [1, 2]]))
    packed = torch.tensor([[3, 5]])
    assert torch.equal(_double_logits_to_keep(packed, 1, 8), torch.tensor([[3, 5, 11, 13]]))
    assert torch.equal(_double_logits_to_keep(torch.tensor([2, 4]), 1, 8), torch.tensor([2, 4, 10, 12]))
    assert _double_logits_to_keep(0, 1, 8) == 0 and _double_logits_to_keep(3, 0, 8) == 3
    with pytest.raises(ValueError, match="along the sequence"):
        _double_logits_to_keep(3, 1, 8)


def test_support_is_detected(data):
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(data[0])
    assert supports_trained_logits_only(model)
    assert supports_trained_logits_only(get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])))
    assert not supports_trained_logits_only(torch.nn.Linear(2, 2))


def test_recipe_losses_match_with_and_without(base_model, alpaca_file, tmp_path):
    from test_train import tiny_config

    losses = {}
    for flag in (True, False):
        out = tmp_path / f"run-{flag}"
        train(
            tiny_config(
                base_model, alpaca_file, out, training__max_steps=3, training__trained_logits_only=flag
            )
        )
        steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[flag] = [s["loss"] for s in steps if "loss" in s]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
