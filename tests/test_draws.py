"""``noise.draws``: K independent noise draws per example and step, the loss their mean (the compute-matched
control of SymNoise). The references are built without the feature: K single-draw forwards of an attachment with
``draws=1`` and the same seed, which use the same draws of the stream (draw k is fixed by its index)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers
from test_attach import EmbeddingRecorder, add_cu_seq_lens, packed_and_padded
from test_packed_attention import (  # noqa: F401
    FLASH_KWARGS,
    FLASH_REFERENCE,
    ShapeRecorder,
    collate,
    flash_reference,
    without,
)
from test_packed_attention import tiny_llama as tiny_llama_for

from symnoise import NoiseConfig, attach
from symnoise import noise as N
from symnoise.data import tokenize_examples
from symnoise.evaluation.runs import method_label, variant_label
from symnoise.noise_stream import derive_seed
from symnoise.pair import _repeat_logits_to_keep, fold_pair_outputs, repeat_batch, views_of
from symnoise.synthetic import make_task_examples, tiny_llama_config, tokenizer_corpus, train_tokenizer

ALPHA = 5.0
TOLERANCE = dict(rtol=1e-5, atol=1e-6)  # fp32: a (K B)-row forward against K B-row forwards


@pytest.fixture(scope="module")
def packed_data():
    """A tokenizer and 12 tokenised examples of the synthetic task (as in tests/test_packed_attention.py)."""
    train, _ = make_task_examples(64, 11, seed=3)
    tokenizer = train_tokenizer(tokenizer_corpus(train), vocab_size=400)
    dataset = tokenize_examples(train, tokenizer, "alpaca", max_length=128)
    return tokenizer, [dataset[i] for i in range(12)]


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = tiny_llama_config(400, hidden_size=32, layers=2, heads=4, kv_heads=2)
    return transformers.LlamaForCausalLM._from_config(config, attn_implementation="eager").float().train()


def padded_batch(seed=0):
    """Three rows of different real lengths (10, 6, 3), prompts masked out of the labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 400, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def packed_batch(varlen=False):
    """One packed row of three sequences told apart by position ids (and ``cu_seq_lens`` with ``varlen``)."""
    _, packed = packed_and_padded([5, 9, 3])
    if varlen:
        add_cu_seq_lens(packed)
    return packed


BATCHES = {
    "padded": lambda: (padded_batch(), {}),
    "padded-num-items": lambda: (padded_batch(), {"num_items_in_batch": 13}),
    "packed": lambda: (packed_batch(), {}),
    "packed-varlen": lambda: (packed_batch(varlen=True), {}),
}


def clean_embeddings(model, inputs):
    """The embeddings without noise, computed without calling the module (whose hooks record every call)."""
    return torch.nn.functional.embedding(inputs["input_ids"], model.get_input_embeddings().weight).detach()


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def step(model, inputs, config, extra=None):
    """One training step of ``model`` under ``config``: loss and gradients (paired execution when the config
    has several views per example and asks for it)."""
    extra = extra or {}
    model.zero_grad(set_to_none=True)
    with attach(model, config) as handle:
        if config.execution == "paired" and config.views > 1:
            total = 0.0
            for weight in handle.paired_passes():
                part = model(**inputs, **extra).loss * weight
                part.backward()
                total = total + part.detach()
        else:
            total = model(**inputs, **extra).loss
            total.backward()
            total = total.detach()
        return total, grads(model), handle.draws


def mean_of_single_draws(model, inputs, config, extra=None):
    """The reference: the same seed with ``draws=1``, one step per draw (step k uses draw k of the stream),
    the losses and gradients averaged over the K steps."""
    single = NoiseConfig(**{**config.to_dict(), "draws": 1})
    model.zero_grad(set_to_none=True)
    losses = []
    with attach(model, single) as handle:
        for _ in range(config.draws):
            if single.views > 1 and single.execution == "paired":
                loss = 0.0
                for weight in handle.paired_passes():
                    part = model(**inputs, **(extra or {})).loss * weight / config.draws
                    part.backward()
                    loss = loss + part.detach() * config.draws
            else:
                loss = model(**inputs, **(extra or {})).loss
                (loss / config.draws).backward()
            losses.append(loss.detach())
        assert handle.draws == config.draws
    return torch.stack(losses).mean(), grads(model), losses


def assert_same_step(actual, expected):
    loss, grad, _ = actual
    ref_loss, ref_grad, _ = expected
    torch.testing.assert_close(loss, ref_loss, **TOLERANCE)
    assert grad.keys() == ref_grad.keys()
    for name in grad:
        torch.testing.assert_close(grad[name], ref_grad[name], **TOLERANCE, msg=name)


# ---------------------------------------- K draws = the mean of K single draws
@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("execution", ["concat", "paired"])
@pytest.mark.parametrize("draws", [2, 3])
@pytest.mark.parametrize("method", ["uniform", "bernoulli"])
def test_k_draws_give_the_mean_of_k_single_draw_losses_and_gradients(method, draws, execution, batch):
    model = tiny_llama()
    inputs, extra = BATCHES[batch]()
    config = NoiseConfig(method, ALPHA, seed=7, draws=draws, execution=execution)
    reference = mean_of_single_draws(model, inputs, config, extra)
    # The draws differ: the reference's losses are not all the same (else the mean would test nothing).
    assert len({float(loss) for loss in reference[2]}) == draws
    loss, grad, stream_draws = step(model, inputs, config, extra)
    assert stream_draws == draws
    assert_same_step((loss, grad, None), reference)


# ---------------------------------------- SymNoise with K draws = K pairs
@pytest.mark.parametrize("batch", ["padded", "packed"])
@pytest.mark.parametrize("execution", ["concat", "paired"])
def test_symnoise_with_two_draws_is_the_mean_of_two_pairs(execution, batch):
    model = tiny_llama()
    inputs, extra = BATCHES[batch]()
    config = NoiseConfig("symnoise", ALPHA, seed=3, draws=2, execution=execution)
    assert config.views == 4
    reference = mean_of_single_draws(model, inputs, config, extra)
    assert reference[2][0] != reference[2][1]
    loss, grad, stream_draws = step(model, inputs, config, extra)
    assert stream_draws == 2  # one draw per pair: the -eps view reuses its +eps view's draw
    assert_same_step((loss, grad, None), reference)


def test_the_views_of_symnoise_with_two_draws_are_two_antithetic_pairs():
    model = tiny_llama()
    inputs = padded_batch()
    seen = EmbeddingRecorder(model).outputs  # what the first layer sees, after the noise
    with attach(model, NoiseConfig("symnoise", ALPHA, seed=0, draws=2)) as handle:
        model(**inputs)
        stream = handle.seed
    clean = clean_embeddings(model, inputs)
    pairs = [expected_views(clean, inputs, "bernoulli", stream, k, (1, -1)) for k in range(2)]
    assert torch.equal(seen[-1], torch.cat(pairs[0] + pairs[1]))  # X + e0, X - e0, X + e1, X - e1
    assert not torch.equal(pairs[0][0], pairs[1][0])


# ---------------------------------------- the views are the specified noise; draws=1 is as before
def expected_views(clean, inputs, distribution, stream, draw, signs):
    """What the attachment adds, computed from the specification: view ``sign`` of draw ``draw`` is
    ``clean + sign * eps_draw * alpha / sqrt(L d) / sqrt(3)``, ``eps_draw`` from
    ``derive_seed(stream, draw)``."""
    lengths = N.token_lengths(inputs["attention_mask"].bool(), None)
    factor = N.distribution_factor(distribution, True)
    scale = N.noise_scale(lengths, clean.shape[-1], ALPHA, factor).to(clean.dtype)
    generator = torch.Generator().manual_seed(derive_seed(stream, draw))
    eps = N.sample_unit_noise(clean.shape, distribution, generator=generator, dtype=clean.dtype)
    return [clean.addcmul(eps, scale, value=sign) for sign in signs]


@pytest.mark.parametrize(
    "method,distribution,signs", [("uniform", "uniform", (1,)), ("symnoise", "bernoulli", (1, -1))]
)
def test_one_draw_is_the_default_and_adds_exactly_the_first_draw_of_the_stream(method, distribution, signs):
    assert NoiseConfig(method).draws == 1 and NoiseConfig(method).to_dict()["draws"] == 1
    # A run info written before draws existed reads as one draw.
    old_run_info = {k: v for k, v in NoiseConfig(method, ALPHA, seed=2).to_dict().items() if k != "draws"}
    assert NoiseConfig.from_dict(old_run_info) == NoiseConfig(method, ALPHA, seed=2, draws=1)
    model = tiny_llama()
    inputs = padded_batch()
    seen = EmbeddingRecorder(model).outputs  # what the first layer sees, after the noise
    with attach(model, NoiseConfig(method, ALPHA, seed=2)) as handle:
        model(**inputs)
        stream, used, copies = handle.seed, handle.draws, handle.pair_copy_positions
    assert used == 1 and copies == (len(signs) - 1) * inputs["input_ids"].numel()
    clean = clean_embeddings(model, inputs)
    expected = expected_views(clean, inputs, distribution, stream, 0, signs)
    assert torch.equal(seen[-1], torch.cat(expected))


def test_k_draws_add_draws_0_to_k_minus_1_of_the_stream_in_order():
    model = tiny_llama()
    inputs = padded_batch()
    seen = EmbeddingRecorder(model).outputs  # what the first layer sees, after the noise
    with attach(model, NoiseConfig("uniform", ALPHA, seed=2, draws=3)) as handle:
        model(**inputs)
        stream = handle.seed
    clean = clean_embeddings(model, inputs)
    expected = [expected_views(clean, inputs, "uniform", stream, k, (1,))[0] for k in range(3)]
    assert torch.equal(seen[-1], torch.cat(expected))


# ---------------------------------------- the stream's count, resume
@pytest.mark.parametrize(
    "config",
    [
        NoiseConfig("uniform", ALPHA, seed=5, draws=3),
        NoiseConfig("uniform", ALPHA, seed=5, draws=3, execution="paired"),
        NoiseConfig("symnoise", ALPHA, seed=5, draws=2),
        NoiseConfig("symnoise", ALPHA, seed=5, draws=2, execution="paired"),
    ],
    ids=["uniform-concat", "uniform-paired", "symnoise-concat", "symnoise-paired"],
)
def test_the_stream_advances_by_draws_per_step_and_a_resumed_stream_continues_it(config):
    model = tiny_llama()
    inputs = padded_batch()
    seen = EmbeddingRecorder(model).outputs  # what the first layer sees, after the noise

    def one_step(handle):
        if config.execution == "paired":
            for _ in handle.paired_passes():
                model(**inputs)
        else:
            model(**inputs)

    with attach(model, config) as handle:
        one_step(handle)
        assert handle.draws == config.draws
        saved = handle.state_dict()
        assert saved["draws"] == config.draws and saved["config"]["draws"] == config.draws
        start = len(seen)
        one_step(handle)
        assert handle.draws == 2 * config.draws
        uninterrupted = seen[start:]
    with attach(model, NoiseConfig(**{**config.to_dict(), "seed": 99})) as handle:
        handle.load_state_dict(saved)
        start = len(seen)
        one_step(handle)
        resumed = seen[start:]
    assert len(resumed) == len(uninterrupted) > 0
    assert all(torch.equal(a, b) for a, b in zip(resumed, uninterrupted, strict=True))
    assert not torch.equal(seen[0], uninterrupted[0])  # the second step drew new noise


# ---------------------------------------- the repeated batch's layout
def test_repeat_batch_along_the_sequence_masks_every_copy_boundary_and_shifts_the_metadata():
    ids = torch.arange(10, 16).view(1, 6)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    kwargs = {
        "input_ids": ids,
        "labels": ids.clone(),
        "position_ids": torch.tensor([[0, 1, 0, 1, 2, 3]]),
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "seq_idx": torch.tensor([[0, 0, 1, 1, 1, 1]]),
        "num_items_in_batch": 4,
        "logits_to_keep": torch.tensor([[1, 5]]),
    }
    repeat_batch(kwargs, along=1, copies=3)
    assert kwargs["input_ids"].tolist() == [list(range(10, 16)) * 3]
    assert kwargs["labels"].tolist() == [
        [10, 11, 12, 13, 14, 15, -100, 11, 12, 13, 14, 15, -100, 11, 12, 13, 14, 15]
    ]
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 2, 6, 8, 12, 14, 18] == kwargs["cu_seq_lens_k"].tolist()
    assert kwargs["seq_idx"].tolist() == [[0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 5, 5]]
    assert kwargs["num_items_in_batch"] == 12
    assert kwargs["logits_to_keep"].tolist() == [[1, 5, 7, 11, 13, 17]]
    assert _repeat_logits_to_keep(torch.tensor([[1, 2]]), 0, 6, 3).tolist() == [[1, 2]] * 3


def test_fold_gives_the_first_view_and_the_mean_of_floating_per_token_outputs():
    rows, length, views = 2, 4, 3
    logps = torch.arange(views * rows * length, dtype=torch.float32).view(views * rows, length)
    hits = torch.arange(views * rows * length).view(views * rows, length) % 2 == 0
    out = fold_pair_outputs({"log_probs": logps, "is_top1": hits}, 0, torch.Size([rows, length]), views=views)
    assert torch.equal(out["log_probs"], (logps[:2] + logps[2:4] + logps[4:]) / 3)
    assert torch.equal(out["is_top1"], hits[:2])
    shifted = torch.arange(views * length - 1, dtype=torch.float32).view(1, -1)  # packed row, shifted by one
    out = fold_pair_outputs({"entropy": shifted}, 1, torch.Size([1, length]), views=views)
    assert out["entropy"].tolist() == [[(0 + 4 + 8) / 3, (1 + 5 + 9) / 3, (2 + 6 + 10) / 3]]


def test_views_order_draws_and_signs():
    assert [(v.draw, v.sign) for v in views_of(2, symmetric=False)] == [(0, 1), (1, 1)]
    assert [(v.draw, v.sign) for v in views_of(2, symmetric=True)] == [(0, 1), (0, -1), (1, 1), (1, -1)]
    assert NoiseConfig("uniform", draws=3).views == 3 and NoiseConfig("symnoise", draws=3).views == 6
    assert NoiseConfig("none", 0, draws=2).views == 1  # nothing to draw


@pytest.mark.parametrize("method,views", [("uniform", 2), ("symnoise", 4)])
def test_a_packed_row_under_flash_attention_keeps_every_view_apart(
    packed_data,
    flash_reference,  # noqa: F811
    method,
    views,
):
    """FlashAttention inferring one row's sequences from position ids: the views extend the row (V T
    positions), and with negligible noise the loss is the padded one (no attention or target across views)."""
    tokenizer, features = packed_data
    padded = collate(tokenizer, features, "none")
    batch = without(collate(tokenizer, features, "padding_free"), FLASH_KWARGS)
    tiny = NoiseConfig(method, 1e-30, seed=0, draws=2)
    with torch.no_grad(), attach(tiny_llama_for(tokenizer), tiny) as handle:
        expected = handle.model(**padded).loss.item()
    model = tiny_llama_for(tokenizer, FLASH_REFERENCE)
    shapes = ShapeRecorder(model)
    with torch.no_grad(), attach(model, tiny):
        out = model(**batch)
    rows, width = batch["input_ids"].shape
    assert shapes.shapes == [(rows, views * width)]
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.logits.shape[:2] == (rows, width)
    assert set(flash_reference.calls) == {"varlen"}


# ---------------------------------------- the Trainer through add_noise
class RecordingCollator:
    """The trainer's collator, keeping every batch it builds."""

    def __init__(self, collator):
        self.collator = collator
        self.batches = []

    def __call__(self, features):
        self.batches.append(self.collator(features))
        return self.batches[-1]


def test_trainer_with_two_draws_concat_equals_paired_and_the_first_loss_is_the_mean_of_two_draws(
    tmp_path, tiny_tokenizer
):
    from test_hf_integration import make_trainer, weights

    from symnoise.hf import add_noise

    config = dict(method="uniform", alpha=ALPHA, seed=3, draws=2)
    finals, losses, first_batches = [], [], []
    initial = None
    for execution in ("concat", "paired"):
        trainer = make_trainer(
            tmp_path / execution, tiny_tokenizer, max_steps=2, optim="sgd", learning_rate=0.1
        )
        initial = initial or weights(trainer.model)
        trainer.data_collator = recorder = RecordingCollator(trainer.data_collator)
        noise = add_noise(trainer, NoiseConfig(**config, execution=execution))
        assert noise.config.execution == execution
        trainer.train()
        finals.append(weights(trainer.model))
        losses.append([e["loss"] for e in trainer.state.log_history if "loss" in e])
        first_batches.append(recorder.batches[0])
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    for key in finals[0]:
        torch.testing.assert_close(finals[0][key], finals[1][key], rtol=1e-4, atol=1e-6, msg=key)
    # The first logged loss is the mean of the two single-draw losses of the first batch at the initial
    # weights.
    assert all(torch.equal(first_batches[0][k], first_batches[1][k]) for k in first_batches[0])
    model = make_trainer(tmp_path / "ref", tiny_tokenizer).model
    model.load_state_dict(initial)
    model.train()
    reference, _, _ = mean_of_single_draws(model, dict(first_batches[0]), NoiseConfig(**config))
    assert losses[0][0] == pytest.approx(
        float(reference), abs=1e-4
    )  # Trainer rounds logged losses to 4 places


def test_a_trainer_that_computes_its_own_loss_runs_the_draws_as_passes(tmp_path, tiny_tokenizer):
    from test_hf_integration import make_trainer

    from symnoise.hf import add_noise

    trainer = make_trainer(tmp_path, tiny_tokenizer, max_steps=1, label_smoothing_factor=0.1)
    noise = add_noise(trainer, NoiseConfig("bernoulli", ALPHA, seed=0, draws=2))
    assert noise.config.execution == "paired"
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)
    one_draw = make_trainer(tmp_path / "one", tiny_tokenizer, max_steps=1, label_smoothing_factor=0.1)
    assert (
        add_noise(one_draw, NoiseConfig("bernoulli", ALPHA)).config.execution == "concat"
    )  # one view: as before


# ---------------------------------------- validation
@pytest.mark.parametrize(
    "value,error",
    [
        (0, ValueError),
        (-1, ValueError),
        ("2", TypeError),
        (2.5, TypeError),
        (2.0, TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_invalid_draws_are_refused_naming_the_field(value, error):
    with pytest.raises(error, match=r"NoiseConfig\.draws must be an integer >= 1"):
        NoiseConfig("uniform", draws=value)
    with pytest.raises(error, match=r"NoiseConfig\.draws"):
        NoiseConfig.from_dict({"method": "symnoise", "draws": value})


# ---------------------------------------- labels and the estimate
def test_report_labels_say_how_many_draws():
    assert variant_label(NoiseConfig("uniform", 5.0, draws=2)) == "NEFT 5 x2"
    assert method_label(NoiseConfig("uniform", 5.0, draws=2)) == "NEFT x2"
    assert variant_label(NoiseConfig("bernoulli", 5.0, draws=3)) == "Bernoulli 5 x3"
    assert variant_label(NoiseConfig("gaussian", 5.0, draws=2)) == "Gaussian 5/sqrt3 x2"
    assert variant_label(NoiseConfig("symnoise", 5.0, draws=2)) == "SymNoise 5 x2"
    assert variant_label(NoiseConfig("uniform", 5.0, symmetric=True, draws=2)) == "NEFT 5 (symmetric) x2"
    assert (
        variant_label(NoiseConfig("none", 0.0, draws=2))
        == method_label(NoiseConfig("none", 0.0, draws=2))
        == "base"
    )
    # One draw: today's labels.
    assert (
        variant_label(NoiseConfig("uniform", 5.0)) == "NEFT 5"
        and method_label(NoiseConfig("symnoise")) == "SymNoise"
    )


def test_estimated_tokens_count_every_view():
    from symnoise.grid.estimate import views_per_example

    assert [
        views_per_example(NoiseConfig(method, draws=draws))
        for method, draws in [
            ("uniform", 1),
            ("uniform", 2),
            ("bernoulli", 3),
            ("symnoise", 1),
            ("symnoise", 2),
        ]
    ] == [1, 2, 3, 2, 4]
    assert views_per_example(NoiseConfig("none", 0.0, draws=2)) == 1


# ---------------------------------------- symnoise train
def test_symnoise_train_runs_two_draws_and_records_them(base_model, alpaca_file, tmp_path):
    from test_train import tiny_config

    from symnoise.train import train

    out = tmp_path / "neft-x2"
    config = tiny_config(
        base_model, alpaca_file, out, noise__method="uniform", noise__draws=2, training__max_steps=2
    )
    assert config.noise.draws == 2
    result = train(config)
    assert result.steps == 2
    run = json.loads((out / "symnoise_run.json").read_text())
    assert run["noise"]["draws"] == 2 and run["noise"]["method"] == "uniform"
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "loss" in s]
    assert steps and all(s["loss"] > 0 for s in steps)
    # Every step runs two views: the processed positions are twice the batch's.
    assert all(
        s["processed_tokens_per_s"] > 1.9 * s["tokens_per_s"] / (1 - s["padding_fraction"]) for s in steps
    )
    checkpoint_state = torch.load(out / "checkpoint-2" / "symnoise_noise_rank0.pt", weights_only=True)
    assert checkpoint_state["draws"] == 2 * 2 * 2  # 2 steps x 2 micro-batches x 2 draws


def test_cli_refuses_bad_draws_before_loading_anything(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {name: no/such-model}\ndata: {path: missing.json}\ntraining: {output_dir: out}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "symnoise", "train", str(config), "noise.method=uniform", "noise.draws=0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert (
        "NoiseConfig.draws must be an integer >= 1; got 0" in proc.stderr and "Traceback" not in proc.stderr
    )
